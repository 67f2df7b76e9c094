"""Chapter 8's claims with error bars: a registry (conf/claims/registry.yaml), the runs it needs
(scripts/train.py sweeps, scripts/forecast.py, in-process measures), paired intervals over seeds,
verdicts, and the page (claims.md, claims.json, one figure per claim).

    python scripts/reproduce.py                 # the default budget, into outputs/claims/default
    python scripts/reproduce.py budget=smoke    # a few minutes on 2 cores

Modules: registry (load and check the config), texts (the derived corpora), runner (the runs,
resumable), measures (a level's value per seed), stats (intervals, verdicts), page (outputs).
"""
