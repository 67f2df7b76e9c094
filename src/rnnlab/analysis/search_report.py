"""The search part of a sweep report (scripts/report.py on a hparams_search=optuna sweep dir).

    from rnnlab.analysis.search_report import search_section
    lines, written = search_section(sweep_dir, jobs)   # jobs: rnnlab.analysis.report.load_job's

A sweep dir holding `study.db` is a search. Its report gets:
- the trials ranked by their objective (the val/ppl the search minimised; test is never
  looked at), then the trials that failed or were still running;
- best_experiment.yaml: the best trial's searched keys as an `experiment/` overlay on the
  LSTM that the search tunes (conf/experiment/search_lstm.yaml). Copied to
  conf/experiment/<name>.yaml, `python scripts/train.py experiment=<name>` plus the search's
  other command-line overrides (written in its header) trains the best trial again, scored
  on test this time;
- search.png: the objective of every trial, and the best so far.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rnnlab.analysis.jobs import Job
from rnnlab.config.overrides import split_override

STUDY = "study.db"
OVERLAY = "best_experiment.yaml"
BASE = "search_lstm"  # the experiment every trial builds on (hparams_search=optuna's defaults)


@dataclass
class Trial:
    number: int
    state: str                 # COMPLETE, FAIL, RUNNING (killed, or still running), ...
    value: float | None        # the objective (val/ppl), COMPLETE trials only
    params: dict[str, object]  # searched key -> value
    job: Job | None            # its job dir, None when it never started


def is_search(sweep_dir: Path) -> bool:
    return (sweep_dir / STUDY).is_file()


def load_trials(sweep_dir: Path, jobs: list[Job]) -> list[Trial]:
    """Every trial of the (only) study in sweep_dir/study.db, in trial-number order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(sweep_dir / STUDY).resolve()}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if len(names) != 1:
        return []  # not one of ours (the sweeper keeps one study per sweep dir)
    study = optuna.load_study(study_name=names[0], storage=storage)
    by_number = {}
    for job in jobs:
        if job.dir.parent == sweep_dir and (m := re.match(r"(\d+)_", job.name)):
            by_number[int(m.group(1))] = job
    return [Trial(t.number, t.state.name, t.value if t.state.name == "COMPLETE" else None,
                  dict(t.params), by_number.get(t.number)) for t in study.trials]


def ranked(trials: list[Trial]) -> list[Trial]:
    """Completed trials by objective (lowest first, ties by number), then the rest by number."""
    done = sorted((t for t in trials if t.value is not None and math.isfinite(t.value)),
                  key=lambda t: (t.value, t.number))
    return done + [t for t in trials if t not in done]


def fixed_overrides(trial: Trial) -> list[str]:
    """The best trial's command-line overrides that were not searched and are not the search
    itself (hparams_search=..., hydra.*): what reproducing it needs besides the overlay."""
    overrides = (trial.job.overrides if trial.job else []) or []
    return [o for o in overrides if split_override(o)[0] not in trial.params
            and not split_override(o)[0].startswith(("hparams_search", "hydra"))]


def _nested(params: dict[str, object]) -> dict:
    out: dict = {}
    for key in sorted(params):
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = params[key]
    return out


def overlay_text(sweep_dir: Path, best: Trial, n_trials: int) -> str:
    """best_experiment.yaml: a header saying where it comes from and how to use it, the base
    experiment, and the searched keys at the best trial's values (exact, so it reproduces it)."""
    fixed = " ".join(fixed_overrides(best))
    header = [
        "# @package _global_",
        f"# The best of {n_trials} trials of the search in {sweep_dir}: trial {best.number}, "
        f"val/ppl {best.value:.4f}.",
        "# Only the searched keys; the rest is the LSTM the search tunes (experiment/"
        f"{BASE}).",
        "# Use it: copy it to conf/experiment/<name>.yaml, then",
        f"#   python scripts/train.py experiment=<name> {fixed}".rstrip(),
        "# trains this trial again (those are the search's other overrides) and scores test once.",
        "# A longer budget (trainer.max_epochs=...) may want a lower model.optimizer.lr.",
    ]
    body = {"defaults": [BASE, "_self_"], **_nested(best.params)}
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_table(trials: list[Trial]) -> list[str]:
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    lines = ["| rank | trial | val/ppl (objective) | status | " + " | ".join(keys) + " |",
             "|" + "---|" * (len(keys) + 4)]
    best = ranked(trials)[0] if trials else None
    for i, t in enumerate(ranked(trials), 1):
        done = t.value is not None and math.isfinite(t.value)
        rank = (f"{i} ★" if t is best else str(i)) if done else "-"
        status = (t.job.summary or {}).get("status", t.state.lower()) if t.job else "not started"
        value = f"**{t.value:.4f}**" if done and t is best else f"{t.value:.4f}" if done else "-"
        lines.append(f"| {rank} | {t.number} | {value} | {status} | "
                     + " | ".join(_short(t.params.get(k, "")) for k in keys) + " |")
    return lines


def plot_search(trials: list[Trial], path: Path) -> Path | None:
    """search.png: each completed trial's objective against its number, the running best as a
    step line, failed trials as crosses along the bottom axis. None without completed trials."""
    done = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([t.number for t in done], [t.value for t in done], "o", color="tab:blue",
            label="trial val/ppl")
    running, best = [], math.inf
    for t in done:
        best = min(best, t.value)
        running.append(best)
    ax.step([t.number for t in done], running, where="post", color="tab:orange", lw=2,
            label="best so far")
    winner = min(done, key=lambda t: (t.value, t.number))
    ax.annotate(f"trial {winner.number}: {winner.value:.3f}", (winner.number, winner.value),
                textcoords="offset points", xytext=(6, 6), fontsize=8)
    failed = [t.number for t in trials if t not in done and t.state == "FAIL"]
    if failed:
        # no value to place them by: along the bottom of the axes
        ax.plot(failed, [0.03] * len(failed), "x", color="tab:red",
                transform=ax.get_xaxis_transform(), label="failed (no val/ppl)")
    ax.set(xlabel="trial", ylabel="val/ppl (the objective)",
           title=f"search: val/ppl of {len(done)} completed trials of {len(trials)}, and the best "
                 f"so far")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def search_section(sweep_dir: Path, jobs: list[Job]) -> tuple[list[str], list[Path], dict]:
    """The report's markdown lines, the files written (overlay, figure) and report.json's
    "search" entry; nothing when sweep_dir is no search."""
    trials = load_trials(sweep_dir, jobs) if is_search(sweep_dir) else []
    if not trials:
        return [], [], {}
    order = ranked(trials)
    best = order[0] if order[0].value is not None else None
    lines = ["## Search", "",
             f"{len(trials)} trials in `{STUDY}`, ranked by the val/ppl the search minimised "
             "(test is never looked at)."]
    written: list[Path] = []
    if best is not None:
        overlay = sweep_dir / OVERLAY
        overlay.write_text(overlay_text(sweep_dir, best, len(trials)))
        written.append(overlay)
        command = " ".join(["python scripts/train.py experiment=<name>", *fixed_overrides(best)])
        lines += [f"Best: trial {best.number}, val/ppl {best.value:.4f}. Its searched keys are in "
                  f"`{OVERLAY}`: copy it to `conf/experiment/<name>.yaml` and run `{command}`."]
    lines += ["", *trial_table(trials), ""]
    figure = plot_search(trials, sweep_dir / "search.png")
    written += [figure] if figure else []
    entry = {"trials": [{"number": t.number, "state": t.state, "value": t.value,
                         "params": t.params, "job": t.job.name if t.job else None}
                        for t in order],
             "best_trial": best.number if best else None,
             "overlay": OVERLAY if best else None}
    return lines, written, entry
