"""Summarise py-spy folded stacks (`py-spy record --format raw`): the hottest functions.

    python -m loadtests.pyspy_top test-output/profile-fanout.txt [--top 20] [--lines]

`self` is the share of samples whose innermost Python frame is that function (time spent
in its own code, including C calls made from it such as transport.write); `total` counts
every sample that has the function anywhere on its stack. Samples that end in the event
loop's `run` frame are time inside uvloop/libuv itself (no Python frame to blame).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _site(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    file = m["file"].split("site-packages/")[-1]
    return f"{m['func']} ({file}:{m['line']})" if with_line and m["line"] else f"{m['func']} ({file})"


def summarise(text: str, top: int = 20, with_line: bool = False) -> tuple[int, list[tuple[str, float, float]]]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for raw in text.splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_site(f, with_line) for f in stack.split(";")]
        own[frames[-1]] += n
        for site in set(frames):
            total[site] += n
    rows = [(site, 100 * n / samples, 100 * total[site] / samples) for site, n in own.most_common(top)]
    return samples, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--lines", action="store_true", help="per source line instead of per function")
    args = ap.parse_args(argv)
    samples, rows = summarise(Path(args.path).read_text(), args.top, args.lines)
    print(f"{samples} samples")
    print(f"{'self %':>7} {'total %':>8}  function")
    for site, self_pct, total_pct in rows:
        print(f"{self_pct:7.1f} {total_pct:8.1f}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
