"""The tools around the pipeline: the CLI, ``up``, the simulator, the fleet generator,
publishing, backtest, the alert views and the dashboards."""
