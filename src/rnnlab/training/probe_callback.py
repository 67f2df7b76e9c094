"""The gradients-through-time probe (rnnlab.evaluation.probe) during training, into TensorBoard.

    callbacks: [GradientsThroughTime(every_n_epochs=5, probe_steps=200, max_distance=150)]

Probes before training (epoch 0), after every `every_n_epochs`-th epoch and after the last one,
on `rows` fixed windows of the validation split, with full BPTT through them. Logs the scalars
through_time/decay_per_step, .../reach, .../beyond_window, .../w_hh_sigma_max, .../w_hh_radius
(for an LSTM also .../decay_per_step_c and .../reach_c; per gate block for GRU/LSTM) at each
probe and, when training ends, one image, through_time/g_k: g(k) on a log scale, one line per
probed epoch, beside a heat map of log10 g(k) over epochs x distance. The group's name sorts
after `perplexity`, which TensorBoard's Time Series must show first. `summary()` is the last
probe's numbers, for summary.json (grad_*). With `bptt=full` nothing is truncated:
beyond_window is 0 and grad_window null (no window). The probes' curves travel in the
checkpoint, so a resumed run's image holds the ones made before the resume too.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytorch_lightning as pl
import torch

from rnnlab.evaluation.probe import probe, probe_windows

log = logging.getLogger(__name__)
GROUP = "through_time"  # TensorBoard's tag group: after "perplexity" (rnnlab.training.tbtags)
KEY = "callbacks.gradients"  # the callback's node in conf/callbacks/default.yaml
DEFAULT_PROBE_STEPS = 200


def _check_positive(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{KEY}.{name}={value!r} must be a positive integer (or turn the probe "
                         f"off with ~{KEY})")


class GradientsThroughTime(pl.Callback):
    """`probe_steps` null: 200 tokens, or the validation split's length when that is shorter;
    `max_distance` null: 3/4 of probe_steps, so that the furthest states probed have already
    forgotten the zero state every window starts from."""

    def __init__(self, every_n_epochs: int = 5, probe_steps: int | None = None,
                 max_distance: int | None = None, rows: int = 8):
        for name, value in (("every_n_epochs", every_n_epochs), ("probe_steps", probe_steps),
                            ("max_distance", max_distance), ("rows", rows)):
            _check_positive(name, value)
        if probe_steps and max_distance and max_distance > probe_steps:
            raise ValueError(f"{KEY}.max_distance={max_distance} is beyond {KEY}.probe_steps="
                             f"{probe_steps}; use max_distance <= probe_steps")
        self.every_n_epochs, self.rows = every_n_epochs, rows
        self.probe_steps, self.max_distance = probe_steps, max_distance
        self.X = self.Y = None
        self.num_steps = 0
        self.history: list[tuple[int, dict[str, torch.Tensor]]] = []  # (epoch, g) per probe
        self.last: dict = {}
        self.seconds: list[float] = []
        self.image_seconds = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if stage != "fit" or dm is None or self.X is not None:
            return
        val = dm.corpus.get("val", torch.zeros(0))
        steps = self.probe_steps or min(DEFAULT_PROBE_STEPS, len(val) - 1)
        if steps > len(val) - 1 or steps <= 0:
            raise ValueError(f"{KEY}.probe_steps={steps} needs {steps + 1} tokens but the "
                             f"validation split has {len(val)}; lower it, give val a larger "
                             f"fraction in data.splits, or turn the probe off with ~{KEY}")
        distance = self.max_distance or steps * 3 // 4
        if distance > steps:
            raise ValueError(f"{KEY}.max_distance={distance} is beyond the probe's {steps} "
                             f"steps; use max_distance <= {KEY}.probe_steps")
        # full BPTT truncates nothing: no window to measure a share beyond (it is 0)
        window = None if getattr(dm, "windows", None) == "full" else dm.num_steps
        self.max_distance, self.num_steps = distance, window
        self.X, self.Y = probe_windows(val, steps, self.rows)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            self._probe(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self._probe(trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history or self.history[-1][0] != trainer.current_epoch:
            self._probe(trainer, pl_module, trainer.current_epoch)  # the final weights
        if not self.history:
            return
        # the image once, at the end: it draws every probe's curve, so one drawn at each probe
        # held nothing the last one lacks, and drawing it (matplotlib) cost as much as g(k)
        t0 = time.perf_counter()
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image(f"{GROUP}/g_k", self.image(), trainer.global_step,
                                            dataformats="HWC")
        self.image_seconds = time.perf_counter() - t0

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if self.X is None:  # no datamodule: nothing to probe with
            return
        t0 = time.perf_counter()
        result = probe(pl_module, self.X, self.Y, self.max_distance, self.num_steps)
        scalars = result.scalars()
        self.history.append((epoch, result.g))
        self.last = {"epoch": epoch, "scalars": scalars, "g": result.g}
        for logger in trainer.loggers:
            logger.log_metrics({f"{GROUP}/{k}": v for k, v in scalars.items()},
                               step=trainer.global_step)
        self.seconds.append(time.perf_counter() - t0)
        beyond = (f"{100 * scalars['beyond_window']:.1f}% of the gradient beyond a "
                  f"{self.num_steps}-step window" if self.num_steps is not None
                  else "nothing truncated (full BPTT)")
        log.info("gradient probe, epoch %d: decay %.3f per step, reach %s steps, %s, W_hh "
                 "sigma_max %.3f (%.2f s)", epoch, scalars["decay_per_step"], scalars["reach"],
                 beyond, scalars["w_hh_sigma_max"], self.seconds[-1])

    def state_dict(self) -> dict:
        """The probes so far travel in the checkpoint, so a resumed run's image holds them."""
        return {"history": [(epoch, {k: v.tolist() for k, v in g.items()})
                            for epoch, g in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [(epoch, {k: torch.tensor(v, dtype=torch.float64) for k, v in g.items()})
                        for epoch, g in state_dict.get("history", [])]

    def image(self) -> np.ndarray:
        """through_time/g_k as an RGB array: per state tensor, g(k) on a log scale with a line per
        probed epoch, and log10 g(k) as a heat map over epochs x distance."""
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = list(self.history[-1][1])
        epochs = [e for e, _ in self.history]
        fig = Figure(figsize=(9, 3.2 * len(names)), dpi=80)
        canvas = FigureCanvasAgg(fig)
        for i, name in enumerate(names):
            curves = np.stack([g[name].numpy() for _, g in self.history])
            ax = fig.add_subplot(len(names), 2, 2 * i + 1)
            for row, (epoch, curve) in enumerate(zip(epochs, curves)):
                ax.semilogy(curve, color=colormaps["viridis"](row / max(len(curves) - 1, 1)),
                            lw=1.2, label=f"epoch {epoch}")
            ax.set(xlabel="distance k (steps back)", ylabel=f"||dL_T / d{name}_(T-k)||")
            if len(curves) <= 8:
                ax.legend(fontsize=7)
            ax.set_title(f"g(k) for {name}, one line per probed epoch", fontsize=9)
            ax = fig.add_subplot(len(names), 2, 2 * i + 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(curves)
            logs[~np.isfinite(logs)] = np.nan
            im = ax.imshow(logs, aspect="auto", origin="lower", cmap="viridis",
                           interpolation="nearest")
            ax.set_yticks(range(len(epochs)), [str(e) for e in epochs])
            ax.set(xlabel="distance k (steps back)", ylabel="epoch")
            ax.set_title(f"log10 g(k) for {name}", fontsize=9)
            fig.colorbar(im, ax=ax)
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.16 / len(names),
                            top=1 - 0.09 / len(names), wspace=0.3, hspace=0.45)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def summary(self) -> dict:
        """The last probe's numbers for summary.json (keys prefixed grad_)."""
        if not self.last:
            return {}
        scalars = self.last["scalars"]
        out = {f"grad_{k}": v for k, v in scalars.items() if "/" not in k}
        blocks = {k.split("/")[1] for k in scalars if "/" in k}
        if blocks:
            out["grad_w_hh"] = {b: {"sigma_max": scalars[f"w_hh_sigma_max/{b}"],
                                    "radius": scalars[f"w_hh_radius/{b}"]} for b in sorted(blocks)}
        out.update({f"grad_g_{name}": [None if not math.isfinite(v) else v for v in g.tolist()]
                    for name, g in self.last["g"].items()})
        out.update(grad_probe_epoch=self.last["epoch"], grad_window=self.num_steps,
                   grad_max_distance=self.max_distance,
                   grad_probe_seconds=sum(self.seconds) / len(self.seconds),
                   grad_image_seconds=self.image_seconds)
        return out

