"""Top entries of a py-spy profile (``--format raw``: collapsed stacks, one line per
distinct stack with its sample count).

``python -m bench.profile FILE [--top N] [--cumulative]`` prints, per function, its
*self* share (the samples where it is the innermost frame) and its *total* share
(samples where it is on the stack anywhere), biggest self first: where a worker's CPU
goes. Samples of a thread waiting in its selector are idle, not CPU: left out unless
``--with-idle``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def frames(stack: str) -> list[str]:
    # "thread;outer (file:line);...;inner (file:line) 12": frame names without lines,
    # so one function's samples add up over its lines.
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        for marker in ("site-packages/", "/streams/", "/bench/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        out.append(f"{name} ({path})" if where else name)
    return out


def idle(innermost: str) -> bool:
    """A thread waiting in its event loop's or server's selector: not CPU."""
    return innermost.startswith(("EpollSelector.select", "_PollLikeSelector.select"))


def top(
    lines: list[str], n: int, with_idle: bool = False
) -> tuple[int, int, list[tuple[str, int, int]]]:
    """(samples counted, idle samples, rows of (function, self, total))."""
    self_: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle_samples = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        fs = frames(stack)
        if idle(fs[-1]):
            idle_samples += k
            if not with_idle:
                continue
        samples += k
        self_[fs[-1]] += k
        for f in set(fs):
            total[f] += k
    rows = [(f, c, total[f]) for f, c in self_.most_common(n)]
    return samples, idle_samples, rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--cumulative", action="store_true", help="rank by total, not self")
    p.add_argument("--with-idle", action="store_true", help="count threads in select too")
    args = p.parse_args(argv)
    lines = Path(args.file).read_text().splitlines()
    samples, idle_samples, rows = top(
        lines, 10_000 if args.cumulative else args.top, args.with_idle
    )
    if args.cumulative:
        rows = sorted(rows, key=lambda r: -r[2])[: args.top]
    print(
        f"{samples} samples ({idle_samples} more idle in select: "
        f"{'counted' if args.with_idle else 'left out'})"
    )
    print("| self % | total % | function |")
    print("|---:|---:|---|")
    for name, s, t in rows:
        print(f"| {100 * s / samples:.1f} | {100 * t / samples:.1f} | {name} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
