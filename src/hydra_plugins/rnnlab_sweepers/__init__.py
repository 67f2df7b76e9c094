"""rnnlab's Hydra sweepers (Hydra finds plugins only in the `hydra_plugins` namespace).

    hydra/sweeper: resumable     # the default (conf/train.yaml): Hydra's grid sweeper, resumable
    hparams_search=optuna        # hydra/sweeper: search, a resumable Optuna TPE search

Both refuse a sweep dir that holds another sweep and end on a bad setting with one line and
exit status 2 (sweeps.sweep); the search lives in rnnlab.sweeps.search. Imports stay light here:
Hydra imports every plugin module at start-up, whatever the command.
"""

import secrets

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

# A per-process random suffix for the default sweep dir, cached like ${now:} so that every job
# of a sweep resolves the same name: two sweeps started in the same second never share a dir.
OmegaConf.register_new_resolver("uid", lambda: secrets.token_hex(3), use_cache=True,
                                replace=True)


class ResumableSweeper(BasicSweeper):
    """Hydra's basic (grid) sweeper; a relaunch into the same sweep dir finishes the sweep."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        from rnnlab.sweeps.sweep import RefusingLauncher

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = RefusingLauncher(self.launcher)

    def sweep(self, arguments):
        from pathlib import Path

        from rnnlab.sweeps.sweep import claim_sweep_dir, one_line_errors, sweep_identity

        with one_line_errors():
            claim_sweep_dir(Path(self.config.hydra.sweep.dir),
                            sweep_identity("grid", self.config, arguments))
            return super().sweep(arguments)


class SearchSweeper(Sweeper):
    """A seeded Optuna TPE search whose study lives in the sweep dir (see rnnlab.sweeps.search)."""

    def __init__(self, n_trials: int, n_jobs: int, seed: int, n_startup_trials: int,
                 study_name: str, params=None) -> None:
        self.options = dict(n_trials=n_trials, n_jobs=n_jobs, seed=seed,
                            n_startup_trials=n_startup_trials, study_name=study_name)
        self.params = params

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        from rnnlab.sweeps.sweep import RefusingLauncher

        self.config, self.hydra_context = config, hydra_context
        self.launcher = RefusingLauncher(Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function))

    def sweep(self, arguments):
        from rnnlab.sweeps.search import Search
        from rnnlab.sweeps.sweep import one_line_errors

        with one_line_errors():
            return Search(self.config, self.hydra_context.config_loader, self.launcher,
                          self.params, **self.options).run(arguments)
