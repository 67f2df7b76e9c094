"""scripts/reproduce.py budget=smoke end to end (about 1.5-2.5 minutes on 2 busy cores), then a
partial rerun: only what was removed runs again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # the whole module runs training end to end

BOOK = Path(os.environ.get("DATA_DIR", ROOT / "outputs" / "data")) / "timemachine.txt"
VERDICTS = {"supported", "contradicted", "inconclusive"}


def _reproduce(out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"),
                           "budget=smoke", f"out_dir={out}"], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "claims.json").read_text())


@pytest.mark.skipif(not BOOK.is_file(), reason=f"no cached corpus at {BOOK}")
def test_smoke_budget_end_to_end_and_a_partial_rerun(tmp_path):
    from rnnlab.claims.registry import load

    out = tmp_path / "claims"
    doc = _reproduce(out)
    registry = load(["budget=smoke"]).claims
    assert [c["id"] for c in doc["claims"]] == [c.id for c in registry]
    for c in doc["claims"]:
        assert c["verdict"] in VERDICTS, c["id"]
        predicted = [x for x in c["comparisons"] if x["expect"] != "info"]
        assert predicted, c["id"]
        for x in predicted:  # a paired interval from every seed
            assert x["n"] == len(doc["seeds"]) >= 2 and x["lo"] is not None, (c["id"], x)
            assert x["lo"] <= x["mean"] <= x["hi"] and x["verdict"] in VERDICTS
        for lv in c["levels"].values():
            assert lv["n"] >= 2 and lv["lo"] <= lv["mean"] <= lv["hi"]
        png = out / c["figure"]
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", c["id"]
        assert f"`{c['id']}`" in (out / "claims.md").read_text()
    # one TensorBoard logdir: every training job, every forecast seed, the claims' figures
    runs = out / "runs"
    jobs = sorted((runs / "train").glob("seed_*/*_claims-variant=*"))
    assert len(jobs) == len(doc["ran"]["train_jobs"]) and all(list(j.glob("tb/**/events.*"))
                                                             for j in jobs)
    assert list((runs / "forecast").glob("seed_*/tb/**/events.*"))
    assert list((runs / "claims").glob("events.*"))

    # a partial run: one training job and one forecast seed lost; the rest must stay untouched
    lost = next(j for j in jobs if j.parent.name == "seed_1" and "variant=random" in j.name)
    kept = {p: p.stat().st_mtime_ns for p in (runs / "train").glob("seed_*/*/summary.json")
            if p.parent != lost}
    subprocess.run(["rm", "-r", str(lost), str(runs / "forecast" / "seed_1")], check=True)
    doc2 = _reproduce(out)
    assert doc2["ran"]["train_jobs"] == [["random", 1]]
    assert doc2["ran"]["forecast_seeds"] == [1]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    again = json.loads(next((runs / "train").glob("seed_1/*variant=random/summary.json"))
                       .read_text())
    assert again["status"] == "finished"
    # seeded: the job run again gives the number it gave before, so the page is the same
    before = {c["id"]: c["levels"] for c in doc["claims"]}
    after = {c["id"]: c["levels"] for c in doc2["claims"]}
    assert after["sampling_both_train"]["random"]["values"] == \
        pytest.approx(before["sampling_both_train"]["random"]["values"], rel=1e-6)
