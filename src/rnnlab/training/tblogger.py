"""TensorBoard as a sweep's user first sees it: perplexity on top, the swept factors in HParams.

    logger: training.tblogger.RunLogger(save_dir=run_dir, name="tb", version="")  # conf/logger
    logger.log_session(cfg, summary)      # at the end of a run: the HParams tab's row for it

What TensorBoard does with our data, and what this module does about it:
- Time Series opens the first two tag groups by name: perplexity goes into one `perplexity/`
  group (training.tbtags) and Lightning's automatic `epoch` scalar, which sorted first, is not
  written (ModelCheckpoint reads the epoch from the trainer, not from the logger).
- A custom-scalars layout puts train and val perplexity of each run on one chart.
- The HParams tab takes its columns from the first run's experiment summary, sorts them by
  (not `differs`, name) and shows the first five. So the experiment is declared here with the
  hyperparameters swept by the sweep (read from its multirun.yaml) and model, sampling, bptt,
  clip marked `differs`, no value domains (a domain filters out the runs whose value is not in
  it, and one job does not know the others' values), and the metrics a user compares.
"""

from __future__ import annotations

import math
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from rnnlab.config.overrides import hydra_runtime, job_overrides, split_override
from rnnlab.config.runname import swept_keys
from rnnlab.training.tbtags import tb_tag

# The chapter's factors: shown first in the HParams tab even where nothing is swept.
CORE = ("model", "sampling", "bptt", "clip")
# Override keys (as typed on the command line) -> the HParams column they change.
COLUMN_OF = {"model": "model", "model.core.kind": "model", "data.sampling": "sampling",
             "bptt": "bptt", "bptt.mode": "bptt", "trainer.gradient_clip_val": "clip",
             "model.optimizer.lr": "lr", "model.core.num_hiddens": "hidden",
             "data.batch_size": "batch_size", "data.num_steps": "num_steps", "seed": "seed"}
# summary.json key -> (scalar tag holding it, the HParams metric's title)
METRICS = {"best_val_ppl": ("perplexity/val_best", "val/ppl (best)"),
           "test_ppl": ("perplexity/test", "test/ppl"),
           "val_ppl_mix": ("perplexity/val_mix", "val/ppl mixture"),
           "test_ppl_mix": ("perplexity/test_mix", "test/ppl mixture"),
           "val_ppl_dyn": ("perplexity/val_dyn", "val/ppl dynamic eval"),
           "test_ppl_dyn": ("perplexity/test_dyn", "test/ppl dynamic eval"),
           "val_ppl_dyn_mix": ("perplexity/val_dyn_mix", "val/ppl dynamic eval + mixture"),
           "test_ppl_dyn_mix": ("perplexity/test_dyn_mix", "test/ppl dynamic eval + mixture"),
           "val_ppl_online": ("perplexity/val_online", "val/ppl online mixture"),
           "test_ppl_online": ("perplexity/test_online", "test/ppl online mixture"),
           "tokens_per_s": ("train/tokens_per_s_epoch", "tokens/s"),
           "diverged": ("train/diverged", "diverged")}
# Custom Scalars tab: each run's train (epoch means) and val perplexity on one chart; val alone.
LAYOUT = {"perplexity": {
    "train and val perplexity": ["Multiline", [r"^perplexity/(train_epoch|val)$"]],
    "val perplexity": ["Multiline", [r"^perplexity/val$"]]}}


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger with the tags, custom-scalars layout and hparams described above."""

    def __init__(self, save_dir: str, name: str = "tb", version: str = "", **kwargs):
        kwargs["default_hp_metric"] = False  # Lightning's hp_metric card: one point, no meaning
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self._layout_written = False

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._layout_written:
            self.experiment.add_custom_scalars(LAYOUT)
            self._layout_written = True
        super().log_metrics({tb_tag(k): v for k, v in metrics.items() if k != "epoch"}, step)

    @rank_zero_only
    def log_session(self, cfg: DictConfig, summary: dict, step: int | None = None) -> None:
        """This run's row in the HParams tab: its hyperparameters and the summary's metrics
        (each also written as a scalar at `step`, where the tab reads it)."""
        swept = swept_columns()
        hparams = hparams_of(cfg, swept)
        shown = set(CORE) | swept
        metrics = {}
        for key, (tag, title) in METRICS.items():
            value = summary.get(key)
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                self.experiment.add_scalar(tag, float(value), global_step=step)
                metrics[tag] = title
        infos = [api_pb2.HParamInfo(name=name, differs=name in shown, type=(
            api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64))
            for name, value in hparams.items()]
        experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title)
            for tag, title in metrics.items()])
        start = plugin_data_pb2.SessionStartInfo()
        for name, value in hparams.items():
            if isinstance(value, str):
                start.hparams[name].string_value = value
            else:
                start.hparams[name].number_value = value
        status = api_pb2.STATUS_FAILURE if summary.get("diverged") else api_pb2.STATUS_SUCCESS
        end = plugin_data_pb2.SessionEndInfo(status=status)
        writer = self.experiment._get_file_writer()
        for tag, data in ((metadata.EXPERIMENT_TAG, {"experiment": experiment}),
                          (metadata.SESSION_START_INFO_TAG, {"session_start_info": start}),
                          (metadata.SESSION_END_INFO_TAG, {"session_end_info": end})):
            plugin_data = plugin_data_pb2.HParamsPluginData(version=0, **data)
            writer.add_summary(Summary(value=[Summary.Value(
                tag=tag, metadata=metadata.create_summary_metadata(plugin_data))]))
        self.experiment.flush()


def hparams_of(cfg: DictConfig, swept: set[str] = frozenset()) -> dict[str, str | float]:
    """The HParams columns of a run: the chapter's knobs, then any other key the sweep varies
    (as the string it was given)."""
    core = cfg.model.core
    keys = {"model": core.get("kind", "rnn_scratch"), "sampling": cfg.data.sampling,
            "bptt": cfg.bptt.mode, "clip": str(cfg.trainer.gradient_clip_val),
            "lr": cfg.model.optimizer.get("lr"), "hidden": core.get("num_hiddens"),
            "batch_size": cfg.data.batch_size, "num_steps": cfg.data.num_steps,
            "seed": cfg.seed}
    out: dict[str, str | float] = {k: v if isinstance(v, str) else float(v)
                                   for k, v in keys.items() if v is not None}
    own = dict(split_override(o) for o in job_overrides())
    for key in sorted(swept - set(out)):
        out[key] = own.get(key, str(OmegaConf.select(cfg, key, default=None)))
    return out


def swept_columns() -> set[str]:
    """HParams columns of the keys this job's sweep varies; empty outside a known sweep."""
    hc = hydra_runtime()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return set()
    # the basic sweeper saves the command line (sweeps unexpanded) above the job dirs
    saved = next((d / "multirun.yaml" for d in list(Path(hc.runtime.output_dir).parents)[:3]
                  if (d / "multirun.yaml").is_file()), None)
    return {COLUMN_OF.get(k, k) for k in swept_keys(hc.sweeper.get("params"), saved)}


