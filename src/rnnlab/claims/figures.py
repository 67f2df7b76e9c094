"""One figure per claim (PNG), also in TensorBoard (<out_dir>/runs/claims).

    from rnnlab.claims.figures import claim_figure, save_figures
    fig = claim_figure(result)              # a matplotlib Figure, for tests to inspect
    save_figures(results, out_dir, jobs)    # figures/<id>.png + the TensorBoard event file

Each level is a column: its per-seed values as dots and its mean with the 95% interval as an
error bar, on a log axis where the claim compares on a log scale. The title carries the verdict.
figure: gk (the matrix-powers claim) adds g(k) of every reference job, the probe's curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

COLOURS = {"supported": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:orange"}


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _levels_axis(ax, result: dict) -> None:
    names = list(result["levels"])
    log = any(c["scale"] == "log" for c in result["comparisons"]) and all(
        v > 0 for lv in result["levels"].values() for v in _finite(lv["values"]))
    for i, name in enumerate(names):
        lv = result["levels"][name]
        vals = _finite(lv["values"])
        ax.plot([i] * len(vals), vals, "o", color="0.55", ms=4, zorder=2)
        if lv["mean"] is not None:
            lo = lv["lo"] if lv["lo"] is not None else lv["mean"]
            hi = lv["hi"] if lv["hi"] is not None else lv["mean"]
            if log:  # a t interval may reach below 0; a log axis shows what is above
                lo = max(lo, min(vals) / 10)
            ax.errorbar([i + 0.15], [lv["mean"]], yerr=[[lv["mean"] - lo], [hi - lv["mean"]]],
                        fmt="s", color="k", capsize=5, ms=6, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=15 if len(names) > 3 else 0)
    ax.set_xlim(-0.5, len(names) - 0.5)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 28, not 2.8x10^1
        vals = [v for lv in result["levels"].values() for v in _finite(lv["values"])]
        # within a decade the minor ticks are the only labels; across decades they crowd
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}")
                                     if max(vals) < 10 * min(vals) else NullFormatter())
    ax.set_ylabel(result["unit"])
    ax.grid(axis="y", alpha=0.3)


def _gk_axis(ax, jobs: dict[tuple[str, int], dict]) -> None:
    for (variant, seed), summary in sorted(jobs.items()):
        g = summary.get("grad_g_h")
        if variant != "base" or not g:
            continue
        pts = [(k, v) for k, v in enumerate(g) if v is not None and v > 0]
        ax.plot([k for k, _ in pts], [v for _, v in pts], lw=1.2,
                label=f"seed {seed} (W_hh σmax {summary.get('grad_w_hh_sigma_max', 0):.2f})")
    ax.set(yscale="log", xlabel="k (steps back)", ylabel="g(k) = mean ||dL_T/dh_(T-k)||",
           title="gradient through time, reference run")
    if ax.lines:
        ax.legend(fontsize=7)


def claim_figure(result: dict, jobs: dict[tuple[str, int], dict] | None = None):
    gk = result.get("figure_kind") == "gk"
    fig, axes = plt.subplots(1, 2 if gk else 1, figsize=(11 if gk else 6.5, 4))
    ax = axes[0] if gk else axes
    _levels_axis(ax, result)
    ax.set_title(f"{result['section']} {result['id']}: {result['verdict']}",
                 color=COLOURS.get(result["verdict"], "k"), fontsize=11)
    if gk:
        _gk_axis(axes[1], jobs or {})
    fig.text(0.01, 0.01, "dots: seeds; squares: mean with 95% t interval", fontsize=7,
             color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def save_figures(results: list[dict], out_dir: Path,
                 jobs: dict[tuple[str, int], dict] | None = None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out_dir / "runs" / "claims"))
    try:
        for r in results:
            fig = claim_figure(r, jobs)
            r["figure"] = f"figures/{r['id']}.png"  # the page links it
            fig.savefig(out_dir / r["figure"], dpi=110)
            writer.add_figure(f"claims/{r['id']}", fig, close=False)
            writer.add_text(f"claims/{r['id']}", f"**{r['verdict']}**: {r['claim']}")
            plt.close(fig)
    finally:
        writer.close()
