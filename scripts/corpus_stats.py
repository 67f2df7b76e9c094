"""Language statistics (D2L 8.3) and the add-k n-gram baseline on the RNN's data split.

    python scripts/corpus_stats.py                           # the Time Machine, word tokens
    python scripts/corpus_stats.py data.token=char
    python scripts/corpus_stats.py data.path=big.txt ngram.ks=[0.5,0.05] zipf.rank_min=1

The run dir gets report.md (top uni/bi/trigrams, distinct n-gram counts, Zipf exponents with the
rank range used, the perplexity table), zipf.png (log-log count vs rank), ngram_ppl.png and
ngram.json ({"best": {"n", "k", "val_ppl", "test_ppl"}, "table": [...], "zipf": ..., ...}), the
baseline a neural model on the same data.token must beat. Returns the best val perplexity.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rnnlab.config.cli import check_command_line, run_main  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="stats")
def main(cfg: DictConfig) -> float:
    from rnnlab.analysis.corpus_stats import (
        corpus_stats,  # heavy imports after Hydra has parsed the command line
    )

    return run_main(corpus_stats, cfg)


if __name__ == "__main__":
    check_command_line(ROOT / "conf", "stats")  # typos: one line, before Hydra and torch
    sys.exit(main())
