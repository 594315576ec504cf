"""Where the suite's workers wait: reads the file PYTEST_TIMELINE wrote (tests/conftest.py) and prints, per worker, its
busy time, its idle gaps over 5 s, and the wall time from the first start to the last end.
Usage: python tests/timeline.py FILE"""

from __future__ import annotations

import sys
from collections import defaultdict


def main(path: str) -> None:
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    by_worker = defaultdict(list)
    for worker, start, end, nodeid in rows:
        by_worker[worker].append((float(start), float(end), nodeid))
    first = min(float(r[1]) for r in rows)
    last = max(float(r[2]) for r in rows)
    print(f"wall {last - first:.0f} s from the first test's start to the last test's end")
    for worker, spans in sorted(by_worker.items()):
        spans.sort()
        busy = sum(end - start for start, end, _ in spans)
        print(f"{worker}: {len(spans)} tests, busy {busy:.0f} s, idle {last - first - busy:.0f} s "
              f"(ends {spans[-1][1] - first:.0f} s after the first start)")
        cursor = first
        for start, end, nodeid in spans:
            if start - cursor > 5:
                print(f"   idle {start - cursor:5.0f} s at {cursor - first:5.0f} s, before {nodeid}")
            cursor = max(cursor, end)
        if last - cursor > 5:
            print(f"   idle {last - cursor:5.0f} s at the end")
        for start, end, nodeid in sorted(spans, key=lambda s: s[0] - s[1])[:5]:
            print(f"   {end - start:5.0f} s from {start - first:5.0f} s: {nodeid}")


if __name__ == "__main__":
    main(sys.argv[1])
