"""Autoregressive forecasting of a noisy sine wave (D2L 8.1): the book's MLP on lag features and a
latent-autoregressive RNN, evaluated one step, multi step and k steps ahead.

    python scripts/forecast.py                               # T=1000, tau=4, k in 1/4/16/64
    python scripts/forecast.py data.tau=16 data.noise=0.1 ks=[1,2,8,32]
    python scripts/forecast.py latent.model.core.kind=gru     # or latent.enabled=false

The run dir gets summary.json ({"mse": {"1": ..}, ...} for the MLP, every model under "models"),
forecast.md (the MSE table), forecast_<model>.png (data vs one-step vs multi-step),
kstep_<model>.png (k-step curves), mse_vs_k.png, and tb/<model>/ (TensorBoard, with the figures).
Returns the MLP's largest-k MSE.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from rnnlab.config.build import build
from rnnlab.config.saved import save_config


def _plots(name: str, dm, ev: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau, start = dm.tau, dm.n_train + dm.tau
    t = range(1, dm.T + 1)  # the book's time axis
    fig1, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, dm.x.numpy(), lw=0.8, color="0.6", label="data")
    ax.plot(t[tau:], ev["one_step"].numpy(), lw=1, label="1-step preds")
    ax.plot(t[start:], ev["multi_step"].numpy(), lw=1.2, label="multistep preds")
    ax.axvline(start + 0.5, color="k", ls=":", lw=0.8)
    ax.set(xlabel="time", ylabel="x", title=f"{name}: one-step vs multi-step (after the "
           f"training data)", xlim=(1, dm.T))
    ax.legend(loc="lower left", fontsize=8)
    fig2, ax = plt.subplots(figsize=(8, 3.5))
    origins = ev["origins"]
    for k in ev["mse"]:
        ax.plot((origins + k).numpy(), ev["kstep"][:, k - 1].numpy(), lw=1, label=f"{k}-step preds")
    ax.set(xlabel="time", ylabel="x", title=f"{name}: k-step-ahead predictions", xlim=(1, dm.T))
    ax.legend(loc="lower left", fontsize=8)
    for fig in (fig1, fig2):
        fig.tight_layout()
    return {f"forecast_{name}": fig1, f"kstep_{name}": fig2}


def _mse_plot(results: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ev in results.items():
        ks = list(ev["mse"])
        ax.plot(ks, [ev["mse"][k] for k in ks], "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="k (steps ahead)", ylabel="MSE",
           title="k-step-ahead error")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    fig.tight_layout()
    return fig


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def forecast(cfg: DictConfig) -> float:
    import json
    import logging
    import time

    import matplotlib.pyplot as plt
    import pytorch_lightning as pl
    import torch

    from rnnlab.forecast.series import evaluate

    log = logging.getLogger("rnnlab.forecast.series")
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    save_config(cfg, out_dir)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    ks = sorted({int(k) for k in cfg.ks})
    if not ks or ks[0] < 1 or ks[-1] > cfg.data.T - cfg.data.tau:
        raise ValueError(f"ks={ks} must be positive integers with max(ks) <= data.T - data.tau "
                         f"= {cfg.data.T - cfg.data.tau}")
    jobs = [("mlp", cfg.model, None, cfg.trainer.max_epochs)]
    if cfg.get("latent") and cfg.latent.get("enabled", True):
        jobs.append(("latent", cfg.latent.model, cfg.latent.window, cfg.latent.max_epochs))
    dms = {name: build(cfg.data, window=window) for name, _, window, _ in jobs}
    results, models, plots = {}, {}, {}
    for name, model_cfg, _, epochs in jobs:
        pl.seed_everything(cfg.seed, workers=True)
        dm = dms[name]
        dm.setup()
        model = build(model_cfg)
        logger = (build(cfg.logger.tensorboard, version=name)
                  if cfg.get("logger") and cfg.logger.get("tensorboard") else False)
        trainer = build(cfg.trainer, logger=logger, max_epochs=epochs,
                               enable_progress_bar=sys.stdout.isatty())
        fit_started = time.time()
        trainer.fit(model, datamodule=dm)
        fit_s = time.time() - fit_started
        ev = evaluate(model, dm, ks)
        results[name] = ev
        figs = _plots(name, dm, ev)
        if name == jobs[-1][0]:
            figs["mse_vs_k"] = _mse_plot(results)
        for tag, fig in figs.items():
            fig.savefig(out_dir / f"{tag}.png", dpi=120)
            plots[tag] = str(out_dir / f"{tag}.png")
            if logger:
                logger.experiment.add_figure(tag, fig, close=False)
            plt.close(fig)
        if logger:
            logger.experiment.flush()
        models[name] = {key: ({str(k): v for k, v in ev[key].items()}
                              if isinstance(ev[key], dict) else ev[key])
                        for key in ("mse", "mse_heldout", "mse_clean", "one_step_mse",
                                    "one_step_mse_heldout", "multi_step_mse")}
        models[name]["fit_s"] = round(fit_s, 2)
        models[name]["epochs"] = int(epochs)
    header = (["model"] + [f"k={k}" for k in ks] + [f"k={k} held-out" for k in ks]
              + ["1-step held-out", "multi-step held-out"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in models.items():
        row = ([name] + [_fmt(m["mse"][str(k)]) for k in ks]
               + [_fmt(m["mse_heldout"][str(k)]) for k in ks]
               + [_fmt(m["one_step_mse_heldout"]), _fmt(m["multi_step_mse"])])
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    (out_dir / "forecast.md").write_text(
        "# k-step-ahead forecasting MSE (D2L 8.1)\n\nMSE against the observed (noisy) series; "
        "k=... columns: all origins of the book's figure; held-out: targets after the training "
        f"data (t > n_train + tau = {cfg.data.n_train + cfg.data.tau}). The noise floor is "
        f"noise^2 = {cfg.data.noise ** 2:g}.\n\n{table}\n")
    summary = {"status": "finished", "seed": cfg.seed, "ks": ks, "mse": models["mlp"]["mse"],
               "mse_heldout": models["mlp"]["mse_heldout"], "models": models, "plots": plots,
               "table": str(out_dir / "forecast.md"), "run_dir": str(out_dir),
               "wall_time_s": round(time.time() - started, 2)}
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "summary.json")
    log.info("forecast MSE per k:\n%s", table)
    log.info("outputs in %s", out_dir)
    return summary["mse"][str(ks[-1])]
