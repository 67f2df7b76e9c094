"""The figures of a sweep report (scripts/report.py): what its table says, drawn.

    from rnnlab.analysis.figures import figures, save_figures
    figs = figures(jobs, keys)       # {"val_ppl.png": Figure, ...}; jobs from analysis.report
    paths = save_figures(jobs, keys, sweep_dir)

- val_ppl.png: val/ppl of every job, against epochs: every job has seen the same training
  tokens at the same epoch, whatever its number of updates (bptt=full makes one per epoch,
  regular windows dozens), so the truncation modes compare at equal data.
- factors.png: one panel per swept key; a colour per level of the key, each job a thin line in
  its level's colour, the mean over the level's jobs a thick one, taken at each epoch that all
  of them reached (never a mean of points at different x).
- grad_norm.png: the gradient norm before clipping at every logged step (the maximum over the
  steps since the last logged one where the run logged train/grad_norm_max), and every job's
  clipping threshold dashed. Where a job's logged points miss its maximum over all steps (the
  table's "max grad norm", from summary.json) that maximum is drawn as a star at its last step.
- grad_through_time.png: every job's last gradients-through-time probe, g(k) and g(k) / g(0).
Every figure and panel has a title.
"""

from __future__ import annotations

import math
from pathlib import Path

from rnnlab.analysis.jobs import CLIP, Job, job_values

GRAD_TAGS = ("train/grad_norm_max", "train/grad_norm")  # the per-interval max where logged
EPOCHS = "epoch (the same training tokens in every job)"


def figures(jobs: list[Job], keys: list[str]) -> dict:
    """File name -> matplotlib Figure; a figure is left out when no job has its data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if any(points(j, "val/ppl") for j in jobs):
        out["val_ppl.png"] = _val_ppl(plt, jobs, keys)
        if keys:
            out["factors.png"] = _factors(plt, jobs, keys)
    if any(grad_series(j)[1] for j in jobs):
        out["grad_norm.png"] = _grad_norm(plt, jobs, keys)
    return out


def save_figures(jobs: list[Job], keys: list[str], out_dir: Path) -> list[Path]:
    figs = figures(jobs, keys)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    written = []
    for name, fig in figs.items():
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def points(job: Job, tag: str) -> list[tuple[int, float]]:
    """The tag's (step, value) points that a log axis can show (finite, positive)."""
    return [(s, v) for s, v in job.scalars.get(tag, []) if math.isfinite(v) and v > 0]


def val_by_epoch(job: Job) -> list[tuple[int, float]]:
    """val/ppl at the end of each epoch, (epoch, value): validation runs once an epoch
    (trainer.check_val_every_n_epoch=1), so its n-th point is epoch n's; points a log axis cannot
    show are left out after numbering."""
    every = ((job.config or {}).get("trainer") or {}).get("check_val_every_n_epoch") or 1
    return [(every * (i + 1), v) for i, (_, v) in enumerate(job.scalars.get("val/ppl", []))
            if math.isfinite(v) and v > 0]


def grad_series(job: Job) -> tuple[str, list[tuple[int, float]]]:
    for tag in GRAD_TAGS:
        if pts := points(job, tag):
            return tag, pts
    return GRAD_TAGS[-1], []


def clip_threshold(job: Job) -> float | None:
    """The job's trainer.gradient_clip_val, None when clipping is off."""
    try:
        theta = float(job_values(job, [CLIP])[CLIP])
    except ValueError:  # null, default
        return None
    return theta if math.isfinite(theta) and theta > 0 else None


def _labeller(jobs: list[Job], keys: list[str]):
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    short = short if len(set(short.values())) == len(short) else {k: k for k in keys}
    seeds = len({job_values(j, ["seed"])["seed"] for j in jobs}) > 1
    return lambda j: ", ".join(f"{short.get(k, k)}={v}" for k, v in job_values(
        j, keys + ["seed"] * seeds).items()) or j.name


def _finish(ax, values: list[float], xlabel: str, ylabel: str, title: str, legend: bool) -> None:
    if values and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if xlabel == EPOCHS:  # whole epochs only
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if legend:  # beside the axes, where it hides no curve
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def _val_ppl(plt, jobs: list[Job], keys: list[str]):
    fig, ax = plt.subplots(figsize=(11, 5))
    label, values = _labeller(jobs, keys), []
    for j in jobs:
        if pts := val_by_epoch(j):
            values += [v for _, v in pts]
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, alpha=0.85, label=label(j))
    _finish(ax, values, EPOCHS, "val/ppl", "validation perplexity, every job", len(jobs) <= 16)
    fig.tight_layout()
    return fig


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean at each x that every curve has: a mean never mixes points at different x, nor
    jumps where one job stops (a diverged one, or a shorter budget)."""
    at: dict[int, list[float]] = {}
    for pts in curves:
        for x, value in pts:
            at.setdefault(x, []).append(value)
    return [(x, sum(vs) / len(vs)) for x, vs in sorted(at.items()) if len(vs) == len(curves)]


def _factors(plt, jobs: list[Job], keys: list[str]):
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(5 * cols, 4 * rows + 0.6))
    for ax, key in zip(axes.flat, keys):
        level_of = {j.name: job_values(j, [key])[key] for j in jobs}
        values = []
        for i, level in enumerate(dict.fromkeys(level_of.values())):
            colour = plt.cm.tab10(i % 10)
            curves = [pts for j in jobs if level_of[j.name] == level and (pts := val_by_epoch(
                j))]
            for pts in curves:
                ax.plot(*zip(*pts), color=colour, lw=0.8, alpha=0.35)
                values += [v for _, v in pts]
            if mean := mean_curve(curves):
                ax.plot(*zip(*mean), color=colour, lw=2.4, marker="o", ms=3,
                        label=f"{level} (mean of {len(curves)})")
        _finish(ax, values, EPOCHS, "val/ppl", f"val/ppl by {key}", legend=False)
        ax.legend(fontsize=7, title=key, title_fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("validation perplexity per swept factor: a colour per level,\nthin lines the "
                 "jobs, thick their mean at each epoch all of them reached", fontsize=10)
    fig.tight_layout()
    return fig


def _grad_norm(plt, jobs: list[Job], keys: list[str]):
    fig, ax = plt.subplots(figsize=(11, 5))
    label, values, tags, starred = _labeller(jobs, keys), [], set(), False
    levels = list(dict.fromkeys(job_values(j, [CLIP])[CLIP] for j in jobs)) if CLIP in keys \
        else []
    thresholds: dict[float, object] = {}
    for i, j in enumerate(jobs):
        tag, pts = grad_series(j)
        if not pts:
            continue
        tags.add(tag)
        colour = plt.cm.tab10((levels.index(job_values(j, [CLIP])[CLIP]) if levels else i) % 10)
        ax.plot(*zip(*pts), lw=0.9, alpha=0.85, color=colour, label=label(j))
        values += [v for _, v in pts]
        most = (j.summary or {}).get("max_grad_norm")
        if isinstance(most, (int, float)) and math.isfinite(most) and most > 0 \
                and max(v for _, v in pts) < most * (1 - 1e-6):
            if not starred:  # one grey legend entry for every star
                ax.plot([], [], ls="none", marker="*", ms=12, color="0.4",
                        label="max over all steps (the table's)")
            ax.plot([pts[-1][0]], [most], ls="none", marker="*", ms=12, color=colour, label="_")
            values.append(most)
            starred = True
        theta = clip_threshold(j)
        if theta is not None:
            thresholds.setdefault(theta, colour if levels else "black")
    for theta, colour in sorted(thresholds.items()):
        ax.axhline(theta, color=colour, ls="--", lw=1.2, label=f"clipping threshold {theta:g}")
        values.append(theta)
    where = "per-step max between logged steps" if tags == {GRAD_TAGS[0]} else \
        "at the logged steps (trainer.log_every_n_steps)"
    title = f"gradient norm before clipping, {where}\n" + "; ".join(
        ["dashed: clipping threshold" if thresholds else "no clipping"]
        + (["star: a job's max over all steps, between logged steps"] if starred else []))
    _finish(ax, values, "step", "train grad norm", title, len(jobs) <= 16)
    fig.tight_layout()
    return fig


def plot_grad_through_time(jobs: list[Job], keys: list[str], out_dir: Path) -> list[Path]:
    """grad_through_time.png: every job's last g(k) (summary.json's grad_g_h) on a log scale,
    coloured by the first swept key, line style by the second; beside it g(k) / g(0) with the
    reach threshold. Nothing when no job has a probe."""
    from rnnlab.evaluation.probe import REACH_RATIO

    curves = [(j, [math.nan if v is None else v for v in j.summary["grad_g_h"]])
              for j in jobs if j.summary and j.summary.get("grad_g_h")]
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour_key, style_key = (keys + [None, None])[:2]
    value = lambda j, key: job_values(j, [key])[key] if key else ""
    colours = {v: plt.cm.tab10(i % 10)
               for i, v in enumerate(dict.fromkeys(value(j, colour_key) for j, _ in curves))}
    styles = {v: ("-", "--", ":", "-.")[i % 4]
              for i, v in enumerate(dict.fromkeys(value(j, style_key) for j, _ in curves))}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for j, g in curves:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={value(j, k)}" for k in keys) or j.name
        style = dict(color=colours[value(j, colour_key)], ls=styles[value(j, style_key)], lw=1.4)
        axes[0].semilogy(g, label=label, **style)
        axes[1].semilogy([v / g[0] for v in g], **style)
    axes[1].axhline(REACH_RATIO, color="grey", lw=0.8, ls=":")
    epoch = {j.summary.get("grad_probe_epoch") for j, _ in curves}
    axes[0].set(title=f"g(k) = ||dL_T / dh_(T-k)||, after epoch {'/'.join(map(str, epoch))}",
                xlabel="distance k (steps back)", ylabel="g(k), mean over probe rows")
    axes[1].set(title=f"g(k) / g(0); dotted: {REACH_RATIO:g} (the reach)",
                xlabel="distance k (steps back)", ylabel="g(k) / g(0)")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "grad_through_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
