"""TensorBoard as a user sees a sweep: the real `tensorboard` server on a tiny 2-job sweep, asked
through the data endpoints its UI renders (what the Time Series, HParams, Text and Custom Scalars
tabs show first)."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_script

TINY = ["data.batch_size=2", "data.num_steps=5", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "torch_threads=1", "callbacks.sample_text.every_n_epochs=0"]  # no periodic sample
SHOWN_BY_DEFAULT = 5  # the HParams tab checks this many columns, `differs` ones first


# the bodies the HParams tab POSTs
EXPERIMENT = {"experimentName": "", "hparamsLimit": 1000, "includeMetrics": True}
SESSIONS = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0,
            "sliceSize": 10, "colParams": [{"metric": {"tag": "perplexity/val_best", "group": ""},
                                            "order": "ORDER_ASC"}]}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A 2-job sweep over the hidden size (a factor the chapter's four are not), and a
    TensorBoard serving it; yields a function that GETs (or POSTs JSON to) an endpoint."""
    tmp = tmp_path_factory.mktemp("tb")
    corpus = tmp / "tiny.txt"
    corpus.write_text("the time traveller was expounding a recondite matter to us. " * 40)
    sweep = tmp / "sweep"
    proc = run_script("scripts/train.py", "--multirun", f"data.path={corpus}", *TINY,
                      f"hydra.sweep.dir={sweep}", "model.core.num_hiddens=8,12", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(sweep), "--port",
         str(port), "--host", "127.0.0.1", "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(endpoint: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{endpoint}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.time() + 40
        while True:  # until it serves both runs' hparams rows (the last thing a run writes)
            try:
                if len(get("data/plugin/hparams/session_groups", SESSIONS)["sessionGroups"]) == 2:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"tensorboard did not come up: {server.stderr.read()[-2000:]}"
                                     if server.poll() is not None else "tensorboard: no hparams")
            time.sleep(0.5)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_perplexity_is_the_first_tag_group_and_epoch_is_gone(board):
    runs = board("data/plugin/scalars/tags")
    assert len(runs) == 2
    for tags in runs.values():
        groups = sorted({tag.split("/", 1)[0] for tag in tags})  # Time Series' group order
        assert groups[0] == "perplexity", groups
        assert {"perplexity/train", "perplexity/val", "perplexity/test"} <= set(tags)
        assert "epoch" not in tags and "hp_metric" not in tags


def test_hparams_tab_shows_the_swept_factor_and_val_and_test_perplexity(board):
    experiment = board("data/plugin/hparams/experiment", EXPERIMENT)
    infos = experiment["hparamInfos"]  # the UI keeps this order, moving `differs` ones first
    shown = [i["name"] for i in sorted(infos, key=lambda i: not i["differs"])][:SHOWN_BY_DEFAULT]
    assert "hidden" in shown and {"model", "sampling"} <= set(shown), shown
    metrics = {m["name"]["tag"]: m["displayName"] for m in experiment["metricInfos"]}
    assert metrics["perplexity/val_best"] == "val/ppl (best)"
    assert metrics["perplexity/test"] == "test/ppl"
    assert {"tokens/s", "diverged"} <= set(metrics.values())
    groups = board("data/plugin/hparams/session_groups", SESSIONS)["sessionGroups"]
    assert sorted(g["hparams"]["hidden"] for g in groups) == [8, 12]
    for group in groups:
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert 1 < values["perplexity/val_best"] < 30 and 1 < values["perplexity/test"] < 30


def test_every_run_has_a_text_sample(board):
    runs = board("data/plugin/text/tags")
    assert len(runs) == 2 and all(any(t.startswith("sample") for t in tags)
                                  for tags in runs.values()), runs


def test_custom_scalars_put_train_and_val_perplexity_on_one_chart(board):
    charts = [chart for category in board("data/plugin/custom_scalars/layout")["category"]
              for chart in category["chart"]]
    both = [c["title"] for c in charts
            if all(any(re.search(rx, tag) for rx in c["multiline"]["tag"])
                   for tag in ("perplexity/train_epoch", "perplexity/val"))]
    assert both, charts


def test_run_names_show_only_what_the_sweep_varies(board):
    # the sidebar's names: the swept key's last part, not the constant overrides (data.path, ...)
    assert sorted(board("data/runs")) == ["0_num_hiddens=8/tb", "1_num_hiddens=12/tb"]
