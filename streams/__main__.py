from streams.tools.cli import main

raise SystemExit(main())
