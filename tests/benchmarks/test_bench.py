"""The benchmark runs (timings are never asserted: they live in benchmarks/bench.py's output)."""

import json

import pytest
from conftest import run_script

pytestmark = pytest.mark.slow  # the whole module runs training end to end


def test_bench_quick_runs_and_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("benchmarks/bench.py", "--quick", "--only", "train", "--only", "data",
                      "--models", "rnn_scratch", "rnn", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    loops = {(r["model"], r["loop"]) for r in result["training"]}
    assert {("book_reference", "plain"), ("rnn_scratch", "lightning"),
            ("rnn_scratch", "plain"), ("rnn", "lightning")} <= loops
    assert all(r["median"] > 0 and r["min"] <= r["median"] <= r["max"]
               for r in result["training"])
    bf16 = {"rnn_scratch+bf16", "rnn+bf16"} if result["bf16_matrix_units"] else set()
    assert {r["model"] for r in result["ratios"]} == {"rnn_scratch", "rnn"} | bf16
    assert result["cpu_model"] and result["cpu_model"] in proc.stdout  # which CPU a figure is from
    chosen = {label.split()[0] for label in result["kernels"]}
    assert {"tanh", "matmul", "linear"} <= chosen <= {"tanh", "matmul", "linear",
                                                       "recurrence_dtype"}
    assert all(label in proc.stdout for label in result["kernels"])
    assert {d["token"] for d in result["data"]} == {"char", "word"}
    assert all(d["tokens"] > 0 and d["peak_rss_gb"] > 0 for d in result["data"])
