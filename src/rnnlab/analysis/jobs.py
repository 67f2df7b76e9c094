"""The jobs of a finished (or killed) sweep as a report reads them: each job dir's overrides,
summary.json, resolved config and TensorBoard scalars, and which keys vary between jobs.

    from rnnlab.analysis.jobs import find_jobs, load_job, varied_keys, job_values
    jobs = [load_job("A", sweep_dir, d) for d in find_jobs(sweep_dir)]
    keys = varied_keys(jobs)          # e.g. ["model", "data.sampling"]
    job_values(jobs[0], keys)         # {"model": "lstm", "data.sampling": "random"}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rnnlab.config.overrides import split_override

NOT_SWEPT = {"seed"}  # seeds are averaged over, never a column
CLIP = "trainer.gradient_clip_val"


class ReportError(ValueError):
    """A sweep dir that does not exist or holds no job dirs, or an unreadable baseline file."""


@dataclass
class Job:
    sweep: str
    dir: Path
    name: str                      # the job dir relative to its sweep dir
    overrides: list[str]
    summary: dict | None           # None: no (readable) summary.json
    config: dict | None            # the resolved config.yaml (or .hydra/config.yaml)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option (hydra.yaml)


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every dir below `sweep_dir` holding .hydra/ or summary.json, in job-number order (Hydra
    nests a job dir in subdirs when an override value contains '/', e.g. data.path=...)."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such directory")
    dirs = {p.parent for pattern in (".hydra", "summary.json") for p in sweep_dir.rglob(pattern)}
    dirs = [d for d in dirs if d != sweep_dir and ".hydra" not in d.relative_to(sweep_dir).parts]
    if not dirs:
        raise ReportError(f"{sweep_dir} is not a sweep dir: no job dirs with .hydra/ or "
                          f"summary.json below it")
    number = lambda d: int(m.group(1)) if (m := re.match(r"(\d+)_", d.relative_to(
        sweep_dir).as_posix())) else math.inf
    return sorted(dirs, key=lambda d: (number(d), str(d)))


def load_scalars(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> sorted (step, value) from every TensorBoard event dir under the job dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.training.tbtags import metric_name

    out: dict[str, list[tuple[int, float]]] = {}
    for d in sorted({f.parent for f in job_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(metric_name(tag), []).extend((e.step, e.value)
                                                        for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


def read_file(path: Path, loader) -> object | None:
    """The file parsed by `loader`, None when it is missing or unparsable."""
    try:
        return loader(path.read_text()) if path.is_file() else None
    except (ValueError, yaml.YAMLError):
        return None


def load_job(sweep: str, sweep_dir: Path, job_dir: Path) -> Job:
    summary = read_file(job_dir / "summary.json", json.loads)
    summary = summary if isinstance(summary, dict) else None
    overrides = read_file(job_dir / ".hydra" / "overrides.yaml", yaml.safe_load)
    if not isinstance(overrides, list):
        overrides = (summary or {}).get("overrides") or []
    config = read_file(job_dir / "config.yaml", yaml.safe_load) or read_file(
        job_dir / ".hydra" / "config.yaml", yaml.safe_load)
    hydra = read_file(job_dir / ".hydra" / "hydra.yaml", yaml.safe_load)
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices") \
        if isinstance(hydra, dict) else None
    return Job(sweep, job_dir, job_dir.relative_to(sweep_dir).as_posix(),
               [str(o) for o in overrides], summary, config if isinstance(config, dict) else None,
               load_scalars(job_dir), {str(k): "null" if v is None else str(v)
                                      for k, v in (choices or {}).items()})


def varied_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (absent counts as a value), seed excluded."""
    per_job = [dict(map(split_override, j.overrides)) for j in jobs]
    keys = list(dict.fromkeys(k for ov in per_job for k in ov))
    return [k for k in keys if k not in NOT_SWEPT and len({ov.get(k) for ov in per_job}) > 1]


def canonical(value: object) -> str:
    """One spelling per value, whether an override wrote it or config.yaml holds it: `1`, `1.0`
    and `1e0` are all `1`; `null` for None."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            return value
        if isinstance(value, str):
            return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return json.dumps(value).strip('"') if not isinstance(value, (dict, list)) else str(value)


def job_values(job: Job, keys: list[str]) -> dict[str, str]:
    """The job's value for each key: its override, else the option its config group took (e.g.
    `bptt` -> `regular`, from .hydra/hydra.yaml), else the resolved config's leaf (unset keys are
    filled with what the run used); 'default' only where none of them is known."""
    overrides = dict(map(split_override, job.overrides))
    out = {}
    for key in keys:
        if key == "sweep":
            out[key] = job.sweep
        elif key in overrides:
            out[key] = canonical(overrides[key])
        elif key in job.choices:
            out[key] = job.choices[key]
        else:
            value: object = job.config
            for part in key.split("."):
                value = value.get(part, {}) if isinstance(value, dict) else {}
            out[key] = "default" if isinstance(value, (dict, list)) else canonical(value)
    return out
