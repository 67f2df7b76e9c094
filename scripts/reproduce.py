"""Chapter 8's claims with error bars: run what conf/claims/registry.yaml needs (several seeds,
resumable), then write claims.md, claims.json, one figure per claim and a TensorBoard logdir.

    python scripts/reproduce.py                    # budget=default: outputs/claims/default/
    python scripts/reproduce.py budget=smoke       # a few minutes on 2 cores
    python scripts/reproduce.py out_dir=/tmp/c budget.seeds=[0,1,2,3]
    python scripts/reproduce.py --publish outputs/claims/default   # -> docs/claims.md + README
    python scripts/reproduce.py --readme           # README's table from docs/claims.md

Killed? Run the same command again: it finishes what is missing (rnnlab.claims.runner).
"""

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    from rnnlab.claims.page import publish, update_readme

    if argv[:1] == ["--publish"]:
        publish(Path(argv[1] if len(argv) > 1 else ROOT / "outputs/claims/default"),
                ROOT / "docs")
        argv = ["--readme"]
    if argv[:1] == ["--readme"]:
        update_readme(ROOT / "README.md", ROOT / "docs" / "claims.md")
        return 0
    from rnnlab.claims.registry import load
    from rnnlab.claims.runner import reproduce

    path = reproduce(load(argv))
    print(f"claims: {path.with_suffix('.md')}  (TensorBoard: {path.parent / 'runs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
