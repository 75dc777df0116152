"""``python -m hwprobe.workloads train|serve [options]`` (``--help`` on each for its options)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m hwprobe.workloads {train,serve} [options]  (see --help of each)"


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the workload named first; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "serve"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "train":
        from hwprobe.workloads.train import main as run
    else:
        from hwprobe.workloads.serve import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
