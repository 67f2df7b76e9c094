"""Summarise sweeps of scripts/train.py: report.md, report.json and plots into the sweep dir.

    python scripts/report.py outputs/multiruns/<date>/<time>
    python scripts/report.py SWEEP_A SWEEP_B        # one combined table, in <parent>/report-A+B
    python scripts/report.py SWEEP --baseline outputs/ngram.json    # plus an n-gram row
                                                    # (of the runs' token kind and data only)
    python scripts/report.py outputs/search/lstm    # a search: + best_experiment.yaml, search.png

Works on a sweep that is still running or partly failed. A directory that does not exist or
holds no job dirs (with .hydra/ or summary.json) ends in one line `error: ...` and status 2.
"""

import argparse
import sys
from pathlib import Path

from rnnlab.analysis.report import ReportError, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="Hydra multirun dirs (hydra.sweep.dir); the report goes into the "
                        "sweep dir, for several into report-A+B beside the first")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="ngram.json from scripts/corpus_stats.py: adds an n-gram baseline row")
    args = parser.parse_args(argv)
    try:
        markdown, written = write_report(args.sweeps, baseline=args.baseline)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    print(f"report in {written[0].parent}: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
