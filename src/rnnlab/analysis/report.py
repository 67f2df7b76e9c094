"""Summarise one or more Hydra sweeps of scripts/train.py: a table, plots and report.json.

    python scripts/report.py outputs/multiruns/<date>/<time>
    python scripts/report.py SWEEP_A SWEEP_B --baseline outputs/ngram.json   # one combined table
    # (in SWEEP_A/../report-A+B/; a baseline of other tokens or data than the runs' is refused)

    from rnnlab.analysis.report import write_report
    markdown, written = write_report([Path("outputs/multiruns/<date>/<time>")])

Writes into the sweep dir (for several sweeps into a dir of its own beside the first,
`report-A+B`, never over a sweep's own report): report.md, one row per configuration (the values
of the overrides that vary between jobs, seed excluded) sorted by best val/ppl, the best
starred, mean ± sample std over seeds; report.json, the same rows (inf/nan as null);
val_ppl.png, factors.png, grad_norm.png and grad_through_time.png (rnnlab.analysis.figures);
on a hparams_search dir also the trials ranked, best_experiment.yaml and search.png
(rnnlab.analysis.search_report). Jobs without summary.json, still marked running (or killed),
or with status failed are listed under "Missing / failed".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from rnnlab.analysis.jobs import (
    Job,
    ReportError,
    find_jobs,
    job_values,
    load_job,
    read_file,
    varied_keys,
)
from rnnlab.config.overrides import split_override

METRICS = ("best_val_ppl", "final_val_ppl", "test_ppl", "train_ppl", "tokens_per_s",
           "wall_time_s", "clipped_fraction", "max_grad_norm", "val_ppl_mix", "test_ppl_mix",
           "mix_weight", *(f"grad_{k}" for k in ("decay_per_step", "reach", "beyond_window",
                                                  "w_hh_sigma_max", "w_hh_radius")))
COLUMNS = (("best val ppl", "best_val_ppl", None), ("final val ppl", "final_val_ppl", None),
           ("test ppl", "test_ppl", None), ("tokens/s", "tokens_per_s", "{:,.0f}"),
           ("wall s", "wall_time_s", "{:.1f}"), ("clipped", "clipped_fraction", "{:.1%}"),
           ("max grad norm", "max_grad_norm", "{:.3g}"))
MIX_COLUMNS = (("val ppl, n-gram mix", "val_ppl_mix", None),  # shown when a job has them
               ("test ppl, n-gram mix", "test_ppl_mix", None),
               ("mix weight on the RNN", "mix_weight", "{:.2f}"))
GRAD_COLUMNS = (("g(k) decay / step", "grad_decay_per_step", "{:.3f}"),  # rnnlab.evaluation.probe
                ("reach (steps)", "grad_reach", "{:.0f}"),
                ("grad beyond window", "grad_beyond_window", "{:.1%}"),
                ("W_hh sigma max", "grad_w_hh_sigma_max", "{:.2f}"))
def _mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def aggregate(items: list[tuple[dict[str, str], dict]]) -> list[dict]:
    """Group (configuration, summary) pairs by configuration: one row per configuration with the
    job count n, the seeds, for each metric its mean, sample std (n > 1) and count of non-null
    values, the statuses and how many jobs diverged. Sorted by mean best_val_ppl (missing or NaN
    last); "best": True on the first row whose jobs all finished (not failed or diverged)."""
    groups: dict[tuple, list[dict]] = {}
    for config, summary in items:
        groups.setdefault(tuple(config.items()), []).append(summary)
    rows = []
    for key, summaries in groups.items():
        row: dict = {"config": dict(key), "n": len(summaries),
                     "seeds": [s.get("seed") for s in summaries]}
        for m in METRICS:
            row[m] = _mean_std([float(s[m]) for s in summaries if isinstance(s.get(m), (int, float))
                                and not isinstance(s.get(m), bool)])
        counts = Counter(s.get("status", "unknown") for s in summaries)
        row["status"] = ", ".join(st if c == len(summaries) else f"{st} x{c}"
                                  for st, c in counts.items())
        row["diverged"] = sum(bool(s.get("diverged")) or s.get("status") == "diverged"
                              for s in summaries)
        rows.append(row)
    best = lambda r: r["best_val_ppl"]["mean"]
    rows.sort(key=lambda r: math.inf if best(r) is None or math.isnan(best(r)) else best(r))
    winner = next((r for r in rows if r["status"] == "finished" and best(r) is not None
                   and math.isfinite(best(r))), None)
    for row in rows:
        row["best"] = row is winner
    return rows


def load_baseline(path: Path, jobs: list[Job] = ()) -> dict:
    """The "best" entry of scripts/corpus_stats.py's ngram.json (n, k, val_ppl, test_ppl) and
    its token kind. Refused when its data differ from a job's (BASELINE_DATA: another token kind,
    text, preprocessing, length or split): its perplexity would not be comparable."""
    data = read_file(path, json.loads) if path.is_file() else None
    if data is None:
        raise ReportError(f"--baseline {path}: no such file or not JSON")
    best = data.get("best") if isinstance(data, dict) else None
    if not isinstance(best, dict) or not isinstance(best.get("val_ppl"), (int, float)):
        raise ReportError(f"--baseline {path}: expected {{\"best\": {{\"n\", \"k\", \"val_ppl\", "
                          f"\"test_ppl\"}}}} as written by scripts/corpus_stats.py")
    for job in jobs:
        runs = (job.config or {}).get("data")
        if isinstance(runs, dict) and (differ := baseline_differences(data, runs)):
            same = " ".join(f"data.{k}={'null' if runs.get(k) is None else runs[k]}"
                            for k in ("token", "path", "preprocess", "max_tokens") if k in runs)
            raise ReportError(
                f"--baseline {path} is of other data than job {job.sweep}/{job.name} "
                f"({'; '.join(differ)}): its perplexity is not comparable; make a baseline on "
                f"the runs' data: python scripts/corpus_stats.py {same}")
    return {**best, "token": data.get("token")}


BASELINE_DATA = ("token", "path", "preprocess", "max_tokens", "splits", "min_freq")


def baseline_differences(baseline: dict, runs: dict) -> list[str]:
    """'key: baseline's value in the baseline, the run's in the runs' for each data setting of
    BASELINE_DATA that differs; a key an older ngram.json lacks is not compared (token always)."""
    out = []
    for key in BASELINE_DATA:
        if key not in baseline and key != "token":
            continue
        mine, theirs = baseline.get(key), runs.get(key)
        if key == "path":  # the same file, however it was written
            mine, theirs = (str(Path(p).expanduser().resolve()) if p else None
                            for p in (mine, theirs))
        if key == "splits" and mine is not None and theirs is not None:
            mine, theirs = [float(x) for x in mine], [float(x) for x in theirs]
        if mine != theirs:
            out.append(f"data.{key}: {mine} in the baseline, {theirs} in the runs")
    return out


def _fmt(stat: dict, fmt: str | None) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "-"
    if fmt:
        return fmt.format(mean) if math.isfinite(mean) else str(mean)
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def render_table(rows: list[dict], keys: list[str], baseline: dict | None = None) -> str:
    """The markdown table: rank (★ best), swept values, n, metrics, diverged, status."""
    cell = lambda v: str(v).replace("|", "\\|")
    mixed = any(row["val_ppl_mix"]["mean"] is not None for row in rows)
    columns = COLUMNS + MIX_COLUMNS if mixed else COLUMNS
    if any(row["grad_reach"]["mean"] is not None for row in rows):
        columns += GRAD_COLUMNS
    lines = ["| " + " | ".join(["rank", *keys, "n", *(c[0] for c in columns), "diverged",
                                "status"]) + " |"]
    lines.append("|" + "---|" * (len(keys) + len(columns) + 4))
    for i, row in enumerate(rows, 1):
        metrics = [_fmt(row[m], fmt) for _, m, fmt in columns]
        if row["best"]:
            metrics[0] = f"**{metrics[0]}**"
        div = "no" if not row["diverged"] else "yes" if row["diverged"] == row["n"] else \
            f"yes ({row['diverged']}/{row['n']})"
        status = row["status"] if row["status"] == "finished" else f"**{row['status']}**"
        lines.append("| " + " | ".join([f"{i} ★" if row["best"] else str(i),
                                        *(cell(row["config"].get(k, "")) for k in keys),
                                        str(row["n"]), *metrics, div, status]) + " |")
    if baseline:
        val, test = (_fmt(_mean_std([float(baseline[k])] if isinstance(
            baseline.get(k), (int, float)) else []), None) for k in ("val_ppl", "test_ppl"))
        kind = f"{baseline['token']} tokens, " if baseline.get("token") else ""
        lines.append("| " + " | ".join([f"n-gram baseline ({kind}n={baseline.get('n')}, "
                                        f"k={baseline.get('k')})", *[""] * (len(keys) + 1), val,
                                        val, test, *["-"] * (len(columns) - 3), "", ""]) + " |")
    return "\n".join(lines)


def missing_jobs(jobs: list[Job], keys: list[str]) -> list[dict]:
    """Jobs without a readable summary.json (and what else they lack) or with status failed."""
    out = []
    for job in jobs:
        status = job.summary.get("status") if job.summary is not None else None
        if job.summary is not None and status not in ("failed", "running"):
            continue
        if status == "failed":
            problem = f"status failed: {job.summary.get('error', 'no error recorded')}"
        elif status == "running":  # written at start, never finished: running, or killed
            val = job.scalars.get("val/ppl")
            problem = ("status running: still running, or killed before it could finish; "
                       + (f"last val/ppl {val[-1][1]:.2f} at step {val[-1][0]}" if val
                          else "no val/ppl events yet"))
        else:
            log = job.dir / "train.log"
            lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
            last = next((ln for ln in reversed(lines) if ln.strip()), None)
            val = job.scalars.get("val/ppl")
            problem = "; ".join(p for p in [
                "summary.json unreadable" if (job.dir / "summary.json").exists()
                else "no summary.json", None if (job.dir / "config.yaml").is_file()
                else "no config.yaml", f"last val/ppl {val[-1][1]:.2f} at step {val[-1][0]}"
                if val else "no val/ppl events", f"train.log ends: {last[:200]}" if last
                else "train.log empty or absent"] if p)
        out.append({"job": job.name, "values": job_values(job, keys + ["seed"]),
                    "problem": problem})
    return out


def report_dir(sweep_dirs: list[Path]) -> Path:
    """Where a report goes: one sweep's own dir; for several, a dir of its own beside the
    first, `report-A+B`, so that a combined report never overwrites a sweep's report."""
    if len(sweep_dirs) == 1:
        return sweep_dirs[0]
    return sweep_dirs[0].parent / ("report-" + "+".join(d.name for d in sweep_dirs))[:200]


def write_report(sweep_dirs: list[Path], baseline: Path | None = None) -> tuple[str, list[Path]]:
    """Read every job of every sweep dir, write report.md/.json and the plots into the sweep dir
    (several sweeps: `report_dir`); returns the markdown and the paths written. Raises
    ReportError on a dir that is no sweep, or on a baseline of other data."""
    from rnnlab.analysis.figures import plot_grad_through_time, save_figures  # matplotlib: here
    from rnnlab.analysis.search_report import search_section  # optuna too

    sweep_dirs = list(dict.fromkeys(Path(d).resolve() for d in sweep_dirs))
    names = [d.name for d in sweep_dirs]
    labels = [n if names.count(n) == 1 else str(d) for n, d in zip(names, sweep_dirs)]
    found = [(label, d, find_jobs(d)) for label, d in zip(labels, sweep_dirs)]
    jobs = [load_job(label, d, j) for label, d, dirs in found for j in dirs]
    base = load_baseline(baseline, jobs) if baseline else None
    keys = varied_keys(jobs)
    columns = (["sweep"] if len(sweep_dirs) > 1 else []) + keys
    finished = [j for j in jobs if j.summary is not None]
    rows = aggregate([(job_values(j, columns), j.summary) for j in finished])
    for row in rows:
        row["jobs"] = [j.name for j in finished if job_values(j, columns) == row["config"]]
    table = render_table(rows, columns, base)
    missing = missing_jobs(jobs, keys)
    shared = sorted({o for j in jobs for o in j.overrides} - {
        o for j in jobs for o in j.overrides if split_override(o)[0] in keys + ["seed"]})
    out_dir = report_dir(sweep_dirs)
    out_dir.mkdir(exist_ok=True)
    plots = save_figures(jobs, columns, out_dir) + plot_grad_through_time(jobs, columns, out_dir)
    # a hparams_search sweep dir: its trials ranked, the best as an experiment overlay, search.png
    search_md, search_files, search = search_section(out_dir, jobs) if len(found) == 1 \
        else ([], [], {})
    plots = [p for p in search_files if p.suffix == ".png"] + plots
    done = sum(j.summary is not None for j in jobs)
    md = ["# Sweep report", "",
          *(f"- sweep `{d}`: {len(js)} jobs" for _, d, js in found),
          f"- {done} of {len(jobs)} jobs have summary.json; swept: "
          + (", ".join(f"`{k}`" for k in keys) or "nothing")
          + "; shared by all jobs: " + (", ".join(f"`{o}`" for o in shared) or "nothing"),
          "- perplexities are mean ± sample std over seeds (n runs), other columns means; ★ marks "
          "the lowest best val/ppl among configurations whose jobs all finished", "",
          *search_md, table, ""]
    if missing:
        md += ["## Missing / failed", "", "Jobs still marked running are running or were killed; "
               "jobs without summary.json never started; failed jobs say why. See each job's "
               "train.log and the sweep's console output.", ""]
        md += [f"- `{m['job']}` ({', '.join(f'{k}={v}' for k, v in m['values'].items())}): "
               f"{m['problem']}" for m in missing] + [""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    text = "\n".join(md) + "\n"
    (out_dir / "report.md").write_text(text)
    report = {"sweeps": [str(d) for d in sweep_dirs], "swept_keys": keys, "shared": shared,
              "rows": rows, "baseline": base, "missing_or_failed": missing,
              "plots": [p.name for p in plots], **({"search": search} if search else {})}
    report = json.loads(json.dumps(report), parse_constant=lambda _: None)  # inf, nan -> null
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    overlay = [p for p in search_files if p.suffix == ".yaml"]
    return text, [out_dir / "report.md", out_dir / "report.json", *overlay, *plots]
