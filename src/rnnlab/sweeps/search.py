"""A seeded, resumable Optuna TPE search over Hydra overrides, minimising val/ppl.

    python scripts/train.py hparams_search=optuna hydra.sweep.dir=outputs/search/lstm
    # killed? the same command finishes it; done? raise hydra.sweeper.n_trials to extend it

The study is `<sweep dir>/study.db` (SQLite). Trial n is job dir `<n>_trial` and samples with
a TPE sampler seeded `seed + n`, from the trials finished before it; so a search killed and
launched again asks exactly what an uninterrupted one would have. On a relaunch the trials
that were running (killed) are run again with their stored parameters: their jobs resume from
last.ckpt or return their stored result (training.relaunch), so nothing is trained twice. Then new
trials are asked until the study holds `n_trials`.

Before anything runs, each search parameter is checked: it must parse, its range must not be
empty, it must name a key of the train config, and both ends of its range must pass the
config checks (rnnlab.config.checks). A failure is one ConfigError line naming the parameter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from rnnlab.config.checks import train_config
from rnnlab.errors import ConfigError
from rnnlab.sweeps.sweep import claim_sweep_dir, sweep_identity

log = logging.getLogger("rnnlab")
FIX = ("write interval(low, high) with low < high, tag(log, interval(low, high)) with low > 0, "
       "or choice(a, b, ...)")


def parse_space(params: dict[str, str], arguments: Sequence[str]
                ) -> tuple[dict[str, BaseDistribution], list[str], dict[str, str]]:
    """(search space, fixed overrides, each parameter's written form) from the sweeper's params
    and the command line's overrides (a sweep override there joins the space)."""
    parser = OverridesParser.create()
    space, fixed, spec = {}, [], {}
    for line in [f"{k}={v}" for k, v in params.items()] + list(arguments):
        key, _, value = line.partition("=")  # a deletion (~key) has no value
        try:
            override = parser.parse_override(line)
            dist = None if override.is_delete() else \
                create_optuna_distribution_from_override(override)
        except Exception as e:  # Hydra's grammar errors and Optuna's range checks alike
            raise ConfigError(f"hydra.sweeper.params.{key}={value} is not a search range "
                              f"({str(e).splitlines()[0]}); {FIX}") from None
        if not isinstance(dist, BaseDistribution):
            fixed.append(line)
            continue
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        if low is not None and not low < high:
            raise ConfigError(f"hydra.sweeper.params.{key}={value} is an empty range "
                              f"(low {low} is not below high {high}); {FIX}")
        space[override.get_key_element()], spec[override.get_key_element()] = dist, value
    return space, fixed, spec


def range_ends(dist: BaseDistribution) -> list:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


class Search:
    """One launch of the search: check, run the killed trials again, ask the missing ones."""

    def __init__(self, config: DictConfig, config_loader, launcher, params, n_trials: int,
                 n_jobs: int, seed: int, n_startup_trials: int, study_name: str):
        self.config, self.loader, self.launcher = config, config_loader, launcher
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.n_trials, self.n_jobs, self.seed = n_trials, max(1, n_jobs), seed
        self.n_startup_trials, self.study_name = n_startup_trials, study_name
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def check(self, space: dict[str, BaseDistribution], fixed: list[str],
              spec: dict[str, str]) -> None:
        ablation = self.config.hydra.runtime.choices.get("ablation")
        if ablation:
            raise ConfigError(f"hparams_search cannot be combined with ablation={ablation}: both "
                              f"define the sweep; drop ablation= (or run it as its own sweep)")
        if not space:
            raise ConfigError("hparams_search: no search parameters; give hydra.sweeper.params, "
                              "e.g. hydra.sweeper.params.model.dropout='interval(0, 0.5)'")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials!r} must be a positive "
                              f"integer")
        for key, dist in space.items():
            for end in range_ends(dist):
                try:
                    cfg = self.loader.load_sweep_config(self.config, [*fixed, f"{key}={end}"])
                except Exception as e:
                    raise ConfigError(
                        f"hydra.sweeper.params: unknown search parameter {key} "
                        f"({str(e).splitlines()[0]}); search keys of the train config (python "
                        f"scripts/train.py --cfg job lists them), or +{key} to add one") from None
                try:
                    train_config(cfg)
                except ConfigError as e:
                    raise ConfigError(f"hydra.sweeper.params.{key}={spec[key]} reaches a bad "
                                      f"setting: {e}; narrow the range") from None

    def run(self, arguments: Sequence[str]) -> None:
        space, fixed, spec = parse_space(self.params, arguments)
        self.check(space, fixed, spec)
        claim_sweep_dir(self.sweep_dir, sweep_identity("search", self.config, arguments))
        storage = f"sqlite:///{(self.sweep_dir / 'study.db').resolve()}"
        study = optuna.create_study(study_name=self.study_name, storage=storage,
                                    direction="minimize", load_if_exists=True)
        killed = [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        done = len(study.trials) - len(killed)
        log.info("search: %s, %d trials done, %d to run again (killed), %d to go", storage, done,
                 len(killed), max(0, self.n_trials - len(study.trials)))
        for i in range(0, len(killed), self.n_jobs):
            batch = killed[i:i + self.n_jobs]
            self.launch(study, [t.number for t in batch], [self.overrides(t.params, fixed)
                                                            for t in batch])
        while len(study.trials) < self.n_trials:
            numbers, overrides = [], []
            for _ in range(min(self.n_jobs, self.n_trials - len(study.trials))):
                number = len(study.trials)
                study.sampler = optuna.samplers.TPESampler(
                    seed=self.seed + number, n_startup_trials=self.n_startup_trials)
                trial = study.ask(space)
                numbers.append(trial.number)
                overrides.append(self.overrides(trial.params, fixed))
            self.launch(study, numbers, overrides)
        self.write_results(study)

    @staticmethod
    def overrides(params: dict, fixed: list[str]) -> list[str]:
        return [*fixed, *(f"{k}={v}" for k, v in params.items())]

    def launch(self, study: optuna.Study, numbers: list[int], overrides: list[list[str]]) -> None:
        """Run trials (consecutive numbers share one launch: job n is dir <n>_trial)."""
        start = 0
        for i in range(1, len(numbers) + 1):
            if i < len(numbers) and numbers[i] == numbers[i - 1] + 1:
                continue
            results = self.launcher.launch(overrides[start:i], initial_job_idx=numbers[start])
            for number, result in zip(numbers[start:i], results):
                self.tell(study, number, result)
            start = i

    @staticmethod
    def tell(study: optuna.Study, number: int, result) -> None:
        try:
            value = float(result.return_value)
        except Exception as e:  # the job failed: a failed trial, TPE leaves it out
            log.warning("trial %d failed: %s", number, e)
            study.tell(number, state=TrialState.FAIL)
            return
        if not math.isfinite(value):
            log.warning("trial %d: val/ppl %s, counted as failed", number, value)
            study.tell(number, state=TrialState.FAIL)
            return
        study.tell(number, value)
        log.info("trial %d: val/ppl %.4f (best so far %.4f, trial %d)", number, value,
                 study.best_value, study.best_trial.number)

    def write_results(self, study: optuna.Study) -> None:
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not complete:
            log.error("search: all %d trials failed; see their train.log under %s",
                      len(study.trials), self.sweep_dir)
            return
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_trial": best.number,
                                         "best_params": best.params, "best_value": best.value}),
                       self.sweep_dir / "optimization_results.yaml")
        log.info("search done: best val/ppl %.4f, trial %d, %s (python scripts/report.py %s)",
                 best.value, best.number, best.params, self.sweep_dir)
