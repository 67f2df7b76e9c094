"""The claims registry (conf/claims/registry.yaml) and the budgets, composed and checked.

    from rnnlab.claims.registry import load, variants_needed
    cfg = load(["budget=smoke"])          # reproduce.yaml + registry + budget, as the CLI does
    variants_needed(cfg.claims)           # ["base", "full", ...]: the training variants to sweep

A level names either a training run (`run: <variant>`, `key: <summary.json key>`) or a measure
(`measure: <name>` and its parameters, rnnlab.claims.measures). `needs` lists what a claim uses;
check() refuses a level outside its claim's needs, an unknown variant or measure, and a comparison
of a level the claim does not have, before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnlab.claims.stats import EXPECTS

CONF = Path(__file__).resolve().parents[3] / "conf" / "claims"
MEASURES = ("forecast", "zipf", "ngram", "vocab", "warmup", "constant")
# which `needs` entry a measure's levels count as
_MEASURE_NEED = {"forecast": "forecast", "zipf": "zipf", "laplace": "ngram",
                 "kneser_ney": "ngram", "vocab_size": "vocab", "warmup": "warmup",
                 "constant": None}


class RegistryError(ValueError):
    pass


def variants() -> list[str]:
    """The training variants there are config files for (conf/claims/variant/)."""
    return sorted(p.stem for p in (CONF / "variant").glob("*.yaml"))


def load(overrides: Sequence[str] = (), conf_dir: Path = CONF) -> DictConfig:
    """reproduce.yaml with its budget and the registry, composed with Hydra's Compose API."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("reproduce", overrides=list(overrides))
    GlobalHydra.instance().clear()
    check(cfg.claims)
    return cfg


def check(claims: Sequence) -> None:
    known = set(variants())
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise RegistryError(f"claim ids repeat: {ids}")
    for c in claims:
        for key in ("id", "section", "claim", "measurement", "needs", "levels", "compare"):
            if OmegaConf.select(c, key) is None:
                raise RegistryError(f"claim {c.get('id')!r} has no {key!r}")
        needs = set(c.needs)
        for name in needs - known - set(MEASURES):
            raise RegistryError(f"claim {c.id!r} needs {name!r}: neither a variant "
                                f"({sorted(known)}) nor a measure ({list(MEASURES)})")
        for name, level in c.levels.items():
            if "run" in level:
                if level.run not in needs:
                    raise RegistryError(f"claim {c.id!r} level {name!r} uses run {level.run!r}, "
                                        f"which is not in its needs {sorted(needs)}")
                if "key" not in level:
                    raise RegistryError(f"claim {c.id!r} level {name!r} names no summary key")
            elif "measure" in level:
                need = _MEASURE_NEED.get(level.measure, "?")
                if need == "?":
                    raise RegistryError(f"claim {c.id!r} level {name!r}: unknown measure "
                                        f"{level.measure!r}; use one of {list(_MEASURE_NEED)}")
                if need is not None and need not in needs:
                    raise RegistryError(f"claim {c.id!r} level {name!r} uses measure "
                                        f"{level.measure!r}, which needs {need!r} in its needs")
            else:
                raise RegistryError(f"claim {c.id!r} level {name!r} has neither run nor measure")
        for cmp in c.compare:
            for side in ("a", "b"):
                if cmp[side] not in c.levels:
                    raise RegistryError(f"claim {c.id!r} compares {cmp[side]!r}, not one of its "
                                        f"levels {list(c.levels)}")
            if cmp.expect not in EXPECTS:
                raise RegistryError(f"claim {c.id!r}: expect={cmp.expect!r}, use {list(EXPECTS)}")


def variants_needed(claims: Sequence) -> list[str]:
    """The training variants any claim needs, sorted (the sweep's order)."""
    known = set(variants())
    return sorted({n for c in claims for n in c.needs if n in known})


def measures_needed(claims: Sequence) -> set[str]:
    return {n for c in claims for n in c.needs if n in MEASURES}
