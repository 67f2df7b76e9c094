"""scripts/report.py on real sweeps of scripts/train.py (tiny corpus, CPU); aggregate() alone."""

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_script

from rnnlab.analysis.figures import figures, mean_curve, val_by_epoch
from rnnlab.analysis.jobs import Job, ReportError, find_jobs, job_values, load_job, varied_keys
from rnnlab.analysis.report import aggregate, write_report

torch.set_num_threads(1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a "
        "recondite matter to us. His grey eyes shone and twinkled, and his usually pale face was "
        "flushed and animated. ") * 12


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return run_script(f"scripts/{name}", *args, env=env)


def multirun(out: Path, corpus: Path, *params: str) -> subprocess.CompletedProcess:
    return script("train.py", "--multirun", *params, f"data.path={corpus}", "data.batch_size=2",
                  "data.num_steps=5", "model.core.num_hiddens=8", "trainer.max_epochs=1",
                  "trainer.accelerator=cpu", "torch_threads=1",
                  "trainer.log_every_n_steps=1",  # every step's grad norm is in the events
                  "callbacks.sample_text.every_n_epochs=0", f"hydra.sweep.dir={out}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def sweep2x2(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("sweeps") / "sampling_x_model"
    r = multirun(out, corpus, "data.sampling=random,sequential", "model=rnn_scratch,rnn")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory, corpus) -> Path:
    """A real sweep with one invalid value. Hydra's basic launcher runs every job of the batch and
    only then re-raises the first failure (exit 1); the bad job fails in train_config, before
    run.py writes anything, so its dir holds only .hydra/ and an empty train.log."""
    out = tmp_path_factory.mktemp("sweeps") / "clip"
    r = multirun(out, corpus, "trainer.gradient_clip_val=-1,1")
    assert r.returncode != 0 and "gradient_clip_val=-1" in r.stderr
    return out


def job_dir(sweep: Path, *needles: str) -> Path:
    """The job dir whose name (`<n>_key=value,...`, with a "," appended) holds every needle."""
    [hit] = [p.parent for p in sweep.rglob(".hydra")
             if all(n in p.parent.relative_to(sweep).as_posix() + "," for n in needles)]
    return hit


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path


def table_lines(markdown: str) -> list[str]:
    """The table's data rows (after the header and the |---| line)."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return lines[2:]


@pytest.mark.slow
def test_report_on_a_real_2x2_sweep(sweep2x2):
    r = script("report.py", str(sweep2x2))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((sweep2x2 / "report.json").read_text())
    assert report["swept_keys"] == ["data.sampling", "model"]
    assert "torch_threads=1" in report["shared"]
    configs = {(row["config"]["data.sampling"], row["config"]["model"]) for row in report["rows"]}
    assert configs == {(s, m) for s in ("random", "sequential") for m in ("rnn_scratch", "rnn")}
    bests = [row["best_val_ppl"]["mean"] for row in report["rows"]]
    assert all(math.isfinite(b) and 1 < b < 100 for b in bests) and bests == sorted(bests)
    for row in report["rows"]:
        assert row["n"] == 1 and row["status"] == "finished" and row["diverged"] == 0
        assert math.isfinite(row["test_ppl"]["mean"]) and row["tokens_per_s"]["mean"] > 0
    assert [row["best"] for row in report["rows"]] == [True, False, False, False]
    assert report["missing_or_failed"] == []

    markdown = (sweep2x2 / "report.md").read_text()
    rows = table_lines(markdown)
    assert len(rows) == 4 and rows[0].startswith("| 1 ★ |") and markdown.count("★") == 2
    for line, row in zip(rows, report["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:3] == [row["config"]["data.sampling"], row["config"]["model"]]
        best = float(cells[4].strip("*").split()[0])
        assert best == pytest.approx(row["best_val_ppl"]["mean"], abs=0.01)
    assert "\n".join(rows) in r.stdout  # the table is printed too, and where it went
    assert f"report in {sweep2x2}: report.md, report.json" in r.stdout
    assert "Missing / failed" not in markdown
    for name in ("val_ppl.png", "factors.png", "grad_norm.png"):
        assert_png(sweep2x2 / name)


def load_figures(sweep: Path) -> dict:
    jobs = [load_job(sweep.name, sweep, d) for d in find_jobs(sweep)]
    return figures(jobs, varied_keys(jobs))


def lines(ax, suffix: str = "") -> dict:
    return {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().endswith(suffix)}


@pytest.mark.slow
def test_figures_are_titled_and_agree_with_the_table(sweep2x2):
    write_report([sweep2x2])
    report = json.loads((sweep2x2 / "report.json").read_text())
    figs = load_figures(sweep2x2)
    assert set(figs) == {"val_ppl.png", "factors.png", "grad_norm.png"}
    for fig in figs.values():
        assert all(ax.get_title() for ax in fig.axes if ax.get_visible())

    [ax] = figs["grad_norm.png"].axes
    drawn = lines(ax)
    for row in report["rows"]:  # every step was logged: each job's curve peaks at the table's max
        line = drawn[f"sampling={row['config']['data.sampling']}, model={row['config']['model']}"]
        assert max(line.get_ydata()) == pytest.approx(row["max_grad_norm"]["mean"], rel=1e-6)
    [threshold] = lines(ax, "clipping threshold 1").values()  # not swept, drawn all the same
    assert list(threshold.get_ydata()) == [1, 1] and threshold.get_linestyle() == "--"
    assert "star" not in ax.get_title() and not [ln for ln in ax.get_lines()
                                                 if ln.get_marker() == "*"]
    assert ax.get_legend() is not None

    panels = [ax for ax in figs["factors.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["val/ppl by data.sampling", "val/ppl by model"]
    for ax in panels:
        means = lines(ax, "(mean of 2)")
        assert len(means) == 2 and len({ln.get_color() for ln in means.values()}) == 2
        jobs = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
        assert len(jobs) == 4
        for mean in means.values():  # the thick line is the mean of its level's two jobs
            mine = [ln for ln in jobs if ln.get_color() == mean.get_color()]
            assert len(mine) == 2
            expected = [(a + b) / 2 for a, b in zip(*(ln.get_ydata() for ln in mine))]
            assert list(mean.get_ydata()) == pytest.approx(expected)


@pytest.mark.slow
def test_a_peak_between_logged_steps_is_starred_at_the_tables_max(sweep2x2, tmp_path):
    # with trainer.log_every_n_steps > 1 the curve can miss the run's max (summary.json's, which
    # the table shows); here one job's summary is raised above its logged points to get that case
    copy = tmp_path / "sampled"
    shutil.copytree(sweep2x2, copy)
    path = job_dir(copy, "random", "model=rnn,") / "summary.json"
    most = json.loads(path.read_text())["max_grad_norm"] * 1.5
    path.write_text(json.dumps(json.loads(path.read_text()) | {"max_grad_norm": most}))
    [ax] = load_figures(copy)["grad_norm.png"].axes
    [star] = [ln for ln in ax.get_lines() if ln.get_marker() == "*" and len(ln.get_ydata())]
    assert list(star.get_ydata()) == [pytest.approx(most)] and "star" in ax.get_title()
    line = lines(ax)["sampling=random, model=rnn"]  # the star is that job's: its colour, its end
    assert star.get_color() == line.get_color() and star.get_xdata()[0] == line.get_xdata()[-1]


@pytest.mark.slow
def test_a_failed_job_is_listed_and_the_others_reported(failed_sweep):
    bad, good = job_dir(failed_sweep, "clip_val=-1"), job_dir(failed_sweep, "clip_val=1,")
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"
    assert (good / "summary.json").is_file()
    r = script("report.py", str(failed_sweep))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((failed_sweep / "report.json").read_text())
    by_clip = {row["config"]["trainer.gradient_clip_val"]: row for row in report["rows"]}
    assert set(by_clip) == {"1", "-1"} and report["rows"][0] is not by_clip["-1"]
    assert math.isfinite(by_clip["1"]["best_val_ppl"]["mean"]) and by_clip["1"]["best"]
    assert by_clip["-1"]["status"] == "failed" and not by_clip["-1"]["best"]
    [missing] = report["missing_or_failed"]
    assert missing["values"]["trainer.gradient_clip_val"] == "-1"
    assert "status failed" in missing["problem"] and "gradient_clip_val=-1" in missing["problem"]
    markdown = (failed_sweep / "report.md").read_text()
    assert len(table_lines(markdown)) == 2
    section = markdown.split("## Missing / failed")[1]
    assert "trainer.gradient_clip_val=-1" in section and "must be >= 0" in section
    assert_png(failed_sweep / "val_ppl.png")


@pytest.mark.slow
def test_a_job_without_summary_is_reported_missing(failed_sweep, tmp_path):
    copy = tmp_path / "killed"
    shutil.copytree(failed_sweep, copy)
    (job_dir(copy, "clip_val=-1") / "summary.json").unlink()  # as if killed before it started
    markdown, _ = write_report([copy])
    report = json.loads((copy / "report.json").read_text())
    [missing] = report["missing_or_failed"]
    assert "no summary.json" in missing["problem"]
    assert len(report["rows"]) == 1 and "no summary.json" in markdown


@pytest.mark.slow
def test_several_sweeps_failed_and_diverged_summaries_and_a_baseline(sweep2x2, failed_sweep,
                                                                     tmp_path):
    # run.py writes status "failed" + error when training itself crashes, and "diverged" when the
    # loss blows up; neither is cheap to provoke for real, so two finished jobs of a copy of the
    # real sweep get their summary.json rewritten to what run.py would write in those cases.
    copy = tmp_path / "edited"
    shutil.copytree(sweep2x2, copy)
    for needles, patch in [(("random", "model=rnn,"), {"status": "failed", "test_ppl": None,
                                                       "error": "RuntimeError: boom"}),
                           (("sequential", "model=rnn,"), {"status": "diverged", "diverged": True,
                                                           "best_val_ppl": float("inf")})]:
        path = job_dir(copy, *needles) / "summary.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | patch))
    baseline = tmp_path / "ngram.json"
    baseline.write_text(json.dumps({"best": {"n": 3, "k": 0.5, "val_ppl": 7.25, "test_ppl": 7.5},
                                    "token": "char", "preprocess": "letters", "all": []}))
    own = (copy / "report.md").read_text() if (copy / "report.md").exists() else None
    markdown, written = write_report([copy, failed_sweep], baseline=baseline)
    # the combined report has a dir of its own: the sweep's own report is left as it was
    combined = tmp_path / "report-edited+clip"
    assert written[0] == combined / "report.md" and all(p.exists() for p in written)
    assert ((copy / "report.md").read_text() if own is not None else None) == own
    report = json.loads((combined / "report.json").read_text())
    assert report["swept_keys"] == ["data.sampling", "model", "trainer.gradient_clip_val"]
    rows = report["rows"]
    assert len(rows) == 6 and {r["config"]["sweep"] for r in rows} == {"edited", "clip"}
    by = {(r["config"]["sweep"], r["config"]["data.sampling"], r["config"]["model"],
           r["config"]["trainer.gradient_clip_val"]): r for r in rows}
    # keys a sweep left unset show the value its jobs ran with (model: the group's option; the
    # clipping threshold 1.0 of the config and the override's 1 are one level)
    assert ("edited", "random", "rnn_scratch", "1") in by
    assert by["clip", "sequential", "rnn_scratch", "1"]["status"] == "finished"
    assert by["clip", "sequential", "rnn_scratch", "-1"]["status"] == "failed"
    diverged = by["edited", "sequential", "rnn", "1"]
    assert diverged["diverged"] == 1 and diverged["best_val_ppl"]["mean"] is None  # inf -> null
    assert rows[-1]["status"] == "failed" and rows[-2] is diverged and not diverged["best"]
    failed = by["edited", "random", "rnn", "1"]
    assert failed["status"] == "failed" and not failed["best"]  # never starred, even if lowest
    assert sum(r["best"] for r in rows) == 1 and next(r for r in rows if r["best"])["status"] \
        == "finished"
    lines = table_lines(markdown)
    assert len(lines) == 7 and lines[-1].startswith("| n-gram baseline (char tokens, n=3, k=0.5) |")
    assert "7.25" in lines[-1] and "7.50" in lines[-1]
    assert any("**failed**" in ln and "| random | rnn |" in ln for ln in lines)
    assert any("**diverged**" in ln and "| yes |" in ln and "| inf |" in ln for ln in lines)
    problems = [m["problem"] for m in report["missing_or_failed"]]
    assert "status failed: RuntimeError: boom" in problems and len(problems) == 2
    assert any("gradient_clip_val=-1" in p for p in problems)
    with pytest.raises(ReportError, match="corpus_stats"):
        write_report([copy], baseline=copy / "report.json")  # JSON, not ngram.json


def test_a_baseline_of_other_tokens_or_data_is_refused_naming_the_difference(sweep2x2,
                                                                              tmp_path):
    best = {"n": 3, "k": 0.5, "val_ppl": 458.5, "test_ppl": 470.0}
    for other, named in [({"token": "word", "preprocess": "letters"}, "data.token: word"),
                         ({"token": "char", "preprocess": "letters", "max_tokens": 1000},
                          "data.max_tokens: 1000"),
                         ({"token": "char", "preprocess": "none"}, "data.preprocess: none")]:
        baseline = tmp_path / "ngram.json"
        baseline.write_text(json.dumps({"best": best, **other}))
        with pytest.raises(ReportError, match="not comparable") as info:
            write_report([sweep2x2], baseline=baseline)
        assert named in str(info.value)
        assert "corpus_stats.py data.token=char" in str(info.value)  # what makes a fair one
    r = script("report.py", str(sweep2x2), "--baseline", str(baseline))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1


def job(name: str, steps: list[int], values: list[float], overrides=(), choices=None,
        config=None) -> Job:
    return Job("s", Path(name), name, list(overrides), {"status": "finished"}, config or {},
               {"val/ppl": list(zip(steps, values))}, choices or {})


def test_truncation_curves_are_drawn_against_epochs_and_averaged_at_equal_x():
    # bptt=full makes one update an epoch, regular windows many: by step, full's curve would sit
    # at steps 0-1 and the others at 31-63; by epoch they share x, as they share training tokens
    jobs = [job("0_bptt=full", [0, 1], [12.0, 10.0], ["bptt=full"]),
            job("1_bptt=regular", [31, 63], [9.0, 7.0], ["bptt=regular"]),
            job("2_bptt=regular", [31, 63, 95], [11.0, 9.0, 8.0], ["bptt=regular", "seed=1"])]
    assert val_by_epoch(jobs[0]) == [(1, 12.0), (2, 10.0)]
    figs = figures(jobs, ["bptt"])
    [ax] = figs["val_ppl.png"].axes
    assert ax.get_xlabel().startswith("epoch")
    assert [list(ln.get_xdata()) for ln in ax.get_lines()] == [[1, 2], [1, 2], [1, 2, 3]]
    [panel] = [a for a in figs["factors.png"].axes if a.get_visible()]
    means = lines(panel, "(mean of 2)")
    [regular] = [ln for label, ln in means.items() if label.startswith("regular")]
    # the mean only where both regular jobs have a point: never a jump where one stops
    assert list(regular.get_xdata()) == [1, 2]
    assert list(regular.get_ydata()) == pytest.approx([10.0, 8.0])
    assert mean_curve([[(1, 2.0), (2, 4.0)], [(1, 4.0)]]) == [(1, 3.0)]


def test_unset_keys_show_the_value_the_job_ran_with():
    jobs = [job("0", [1], [5.0], ["bptt=full", "trainer.gradient_clip_val=1"],
                {"bptt": "full"}),
            job("1", [1], [5.0], [], {"bptt": "regular"},
                {"trainer": {"gradient_clip_val": 1.0}})]
    assert varied_keys(jobs) == ["bptt", "trainer.gradient_clip_val"]
    assert job_values(jobs[1], ["bptt", "trainer.gradient_clip_val"]) == {
        "bptt": "regular", "trainer.gradient_clip_val": "1"}  # not "default", not "1.0"
    assert job_values(jobs[0], ["trainer.gradient_clip_val"]) == {
        "trainer.gradient_clip_val": "1"}


def test_not_a_sweep_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for target, message in [(tmp_path / "empty", "is not a sweep dir"),
                            (tmp_path / "nope", "no such directory")]:
        r = script("report.py", str(target))
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.startswith("error: ") and message in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_aggregate_mean_std_and_counts_over_seeds():
    a, b, c = {"model": "rnn"}, {"model": "gru"}, {"model": "lstm"}
    items = [(a, {"seed": s, "status": "finished", "best_val_ppl": v, "test_ppl": v + 1,
                  "diverged": False}) for s, v in ((0, 10.0), (1, 12.0), (2, 14.0))]
    items += [(b, {"seed": 0, "status": "finished", "best_val_ppl": 11.0, "diverged": False}),
              (c, {"seed": 0, "status": "failed", "best_val_ppl": None}),
              (c, {"seed": 1, "status": "diverged", "best_val_ppl": 30.0, "diverged": True}),
              (c, {"seed": 2, "status": "diverged", "best_val_ppl": 50.0, "diverged": True})]
    rows = aggregate(items)
    assert [r["config"] for r in rows] == [b, a, c]  # by mean best val/ppl: 11 < 12 < 40
    gru, rnn, lstm = rows
    assert rnn["n"] == 3 and rnn["seeds"] == [0, 1, 2]
    assert rnn["best_val_ppl"] == {"mean": 12.0, "std": pytest.approx(2.0), "n": 3}  # sample std
    assert rnn["test_ppl"]["mean"] == 13.0 and rnn["train_ppl"] == {"mean": None, "std": None,
                                                                    "n": 0}
    assert gru["best_val_ppl"] == {"mean": 11.0, "std": None, "n": 1} and gru["best"]
    assert not rnn["best"] and not lstm["best"]
    assert lstm["n"] == 3 and lstm["best_val_ppl"]["n"] == 2
    assert lstm["best_val_ppl"]["mean"] == 40.0
    assert lstm["best_val_ppl"]["std"] == pytest.approx(math.sqrt(200.0))
    assert lstm["diverged"] == 2 and lstm["status"] == "failed x1, diverged x2"
