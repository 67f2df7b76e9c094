"""Bad input, divergence, interruption and resume, downloads: nothing lost, every error clear."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_cfg, run_script

from rnnlab.errors import ConfigError, CorpusError
from rnnlab.text import corpus as corpus_mod
from rnnlab.text.corpus import download
from rnnlab.training.checkpoints import AtomicCheckpointIO, MovableCheckpoint
from rnnlab.training.run import train


def summary(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


@pytest.mark.parametrize("override, match", [
    ("data.sampling=shuffled", "data.sampling='shuffled'"),
    ("data.token=bpe", "data.token='bpe'"),
    ("data.num_steps=0", "data.num_steps=0"),
    ("data.batch_size=-2", "data.batch_size=-2"),
    ("model.core.num_hiddens=0", "model.core.num_hiddens=0"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2 is not supported "
     r"\(train/ppl would be wrong\): use 1"),
    ("data.num_steps=5000", "fewer than one minibatch"),
    ("data.min_freq=100000", "only <unk>"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt does not exist"),
    ("ngram_mix={order:10,words:3}", "ngram_mix.words=3 is an expert of the online mixture"),
    ("ngram_mix={order:10,online:true,words:3}", None),  # with word tokens: refused below
    ("bptt=full", None),  # full with random sampling is refused below
])
@pytest.mark.slow
def test_bad_settings_are_refused_with_the_value_and_the_fix(cfg_factory, override, match):
    if override == "bptt=full":
        override, match = "data.sampling=random", "needs data.sampling=sequential"
        cfg = cfg_factory("bptt=full", override)
    elif "online:true,words" in override:
        match = r"ngram_mix.words=3 reads words by characters; data.token='word'"
        cfg = cfg_factory(override, "data.token=word")
    else:
        cfg = cfg_factory(override)
    with pytest.raises((ConfigError, ValueError), match=match):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # no half run


@pytest.mark.slow
def test_a_word_expert_on_text_without_spaces_is_refused_before_training(cfg_factory, tmp_path):
    text = tmp_path / "nospaces.txt"
    text.write_text("timetraveller" * 400)
    cfg = cfg_factory("ngram_mix={order:3,online:true,words:2}", path=text)
    with pytest.raises(ConfigError, match=r"ngram_mix.words=2 reads words between spaces.*no "
                                          r"' ' among them: set ngram_mix.words=null"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # refused before training


@pytest.mark.slow
def test_cli_error_is_one_line_and_exit_code_2(corpus_file, tmp_path):
    proc = run_script("scripts/train.py", f"data.path={corpus_file}", "data.sampling=shuffled",
                      f"hydra.run.dir={tmp_path / 'cli'}", timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == ["error: data.sampling='shuffled' is unknown; use one of "
                      "['random', 'sequential']"]


def test_errors_raised_inside_constructors_are_one_line_too(corpus_file, tmp_path):
    proc = run_script("scripts/train.py", f"data.path={corpus_file}",
                      "model.core.kind=transformer", "model=rnn",
                      f"hydra.run.dir={tmp_path / 'cli'}", timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == ["error: model.core.kind='transformer' is unknown; use one of "
                      "['rnn', 'gru', 'lstm']"]


@pytest.mark.slow
def test_divergence_with_clipping_on_is_reported_not_crashed(cfg_factory):
    cfg = cfg_factory("model.optimizer.lr=1e4", "trainer.gradient_clip_val=1000000",
                      "model.core.num_hiddens=64", "trainer.max_epochs=3", "test=false")
    train(cfg)
    assert summary(cfg)["status"] == "diverged"


def test_full_bptt_memory_estimate_refuses_what_would_not_fit(cfg_factory):
    cfg = cfg_factory("bptt=full", "bptt.max_memory_gb=0.000001")
    with pytest.raises(ConfigError, match=r"bptt=full would keep about .* GB.*max_memory_gb"):
        train(cfg)


@pytest.mark.slow
def test_divergence_stops_at_once_and_keeps_the_best_checkpoint(cfg_factory):
    cfg = cfg_factory("model.optimizer.lr=10", "trainer.gradient_clip_val=null",
                      "trainer.max_epochs=5", "model.core.num_hiddens=64",
                      "+trainer.val_check_interval=2")  # validate (and checkpoint) every 2 steps
    assert train(cfg) < 100
    s = summary(cfg)
    assert s["status"] == "diverged" and s["diverged"] is True
    assert 0 < s["diverged_at_step"] < 20 and s["global_step"] <= s["diverged_at_step"] + 1
    best = Path(s["checkpoints"]["best"])
    assert best.is_file() and s["best_val_ppl"] < 100  # a checkpoint from before it blew up
    assert torch.load(best, weights_only=False)["global_step"] < s["diverged_at_step"] + 1


@pytest.mark.slow
def test_corrupt_and_incompatible_checkpoints_are_refused(cfg_factory, tmp_path):
    cfg = cfg_factory("test=false")
    train(cfg)
    last = Path(summary(cfg)["checkpoints"]["last"])
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(last.read_bytes()[:100])
    with pytest.raises(ConfigError, match="corrupt"):
        train(cfg_factory(f"ckpt_path={bad}"))
    run_dir = last.parent.parent
    kept = {name: (run_dir / name).read_text() for name in ("summary.json", "config.yaml")}
    with pytest.raises(ConfigError, match="model.core.num_hiddens: 16 in the run, 24 now"):
        train(cfg_factory(f"ckpt_path={last}", "model.core.num_hiddens=24"))
    # the refused resume leaves the run it names as it was
    assert {name: (run_dir / name).read_text() for name in kept} == kept
    other_text = tmp_path / "other.txt"
    other_text.write_text("zyxw vut " * 400)
    with pytest.raises(ConfigError, match="another vocabulary") as info:
        train(cfg_factory(f"ckpt_path={last}", path=other_text))  # data.path may change
    # the message names what differs, not "28 tokens, this data has 28"
    assert "only in the checkpoint: " in str(info.value) and "'z'" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("sampling, bptt", [("random", "randomized"), ("sequential", "regular")])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, corpus_file, sampling, bptt):
    common = [f"data.sampling={sampling}", f"bptt={bptt}", "trainer.max_epochs=3", "test=false",
              "model.embedding_dim=8", "model.dropout=0.2"]
    straight = make_cfg(tmp_path / "a", corpus_file, common)
    expected = train(straight)
    cut = make_cfg(tmp_path / "b", corpus_file,
                   [*common, "+callbacks.stop._target_=conftest.SignalAtStep",
                    "+callbacks.stop.step=160"])  # in the last epoch
    with pytest.raises(SystemExit) as info:
        train(cut)
    assert info.value.code == 128 + signal.SIGINT
    s = summary(cut)
    assert s["status"] == "interrupted" and s["global_step"] == 160
    cut_dir = tmp_path / "b" / "run"
    last = cut_dir / "checkpoints" / "last.ckpt"
    resumed = make_cfg(tmp_path / "c", corpus_file, [*common, f"ckpt_path={last}"])
    got = train(resumed)
    assert summary(resumed)["run_dir"] == str(cut_dir)  # it went on in the same run dir
    assert got == pytest.approx(expected, rel=1e-6)
    straight_summary = json.loads((tmp_path / "a" / "run" / "summary.json").read_text())
    for key in ("final_val_ppl", "train_ppl"):  # train_ppl: the cut epoch's, whole
        assert summary(resumed)[key] == pytest.approx(straight_summary[key], rel=1e-6)


@pytest.mark.slow
def test_sigterm_from_outside_saves_last_checkpoint_and_summary(corpus_file, tmp_path):
    run_dir = tmp_path / "sig"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/train.py"), f"data.path={corpus_file}",
         "data.batch_size=4", "data.num_steps=8", "model.core.num_hiddens=16",
         "trainer.max_epochs=100000", "trainer.accelerator=cpu", "torch_threads=1",
         f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until training is under way
        if "epoch 2/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["global_step"] > 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == s["global_step"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def crash(obj, f):
        Path(f).write_bytes(b"half a checkp")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_partial_download_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def dies_midway(url, dest):
        dest.write_text("partial")
        raise TimeoutError("read timed out")

    monkeypatch.setattr(corpus_mod, "_fetch", dies_midway)
    with pytest.raises(CorpusError, match="could not download"):
        download("http://x/t.txt", tmp_path / "t.txt", "0" * 40)
    assert not (tmp_path / "t.txt").exists()
    assert not list(tmp_path.glob("*.part"))


def test_read_only_data_dir_says_what_to_do(tmp_path, monkeypatch):
    # chmod does not stop root (CI runs as root), so the refusal is simulated at mkdir
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(CorpusError, match=r"cannot write the corpus cache .*data.data_dir"):
        download("http://x/t.txt", tmp_path / "ro" / "t.txt", "0" * 40)


def test_two_jobs_downloading_at_once_fetch_once(tmp_path, monkeypatch):
    payload = b"the time machine\n"
    import hashlib

    sha1 = hashlib.sha1(payload).hexdigest()
    calls = []

    def slow_fetch(url, dest):
        calls.append(url)
        time.sleep(0.3)
        dest.write_bytes(payload)

    monkeypatch.setattr(corpus_mod, "_fetch", slow_fetch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        download("http://x/t.txt", tmp_path / "t.txt", sha1).read_bytes())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [payload, payload] and len(calls) == 1



def test_a_moved_run_dir_finds_its_best_checkpoint_and_keeps_its_score(tmp_path):
    """Lightning keeps the old absolute best path (and drops the score) when the dir changed."""
    old, new = tmp_path / "there" / "checkpoints", tmp_path / "here" / "checkpoints"
    saved = MovableCheckpoint(dirpath=old, monitor="val/ppl")
    saved.best_model_path = str(old / "best-epoch001-val_ppl9.64.ckpt")
    saved.best_model_score = torch.tensor(9.64)
    saved.best_k_models = {saved.best_model_path: torch.tensor(9.64)}
    saved.kth_best_model_path = saved.best_model_path
    moved = MovableCheckpoint(dirpath=new, monitor="val/ppl")
    moved.load_state_dict(saved.state_dict())
    assert moved.best_model_path == str(new / "best-epoch001-val_ppl9.64.ckpt")
    assert float(moved.best_model_score) == pytest.approx(9.64)
    assert list(moved.best_k_models) == [moved.best_model_path]
    same = MovableCheckpoint(dirpath=old, monitor="val/ppl")
    same.load_state_dict(saved.state_dict())
    assert same.best_model_path == saved.best_model_path


@pytest.mark.slow  # a training run
def test_a_job_dir_another_live_process_trains_is_refused_until_it_ends(cfg_factory):
    from rnnlab.training.relaunch import JobBusy

    cfg = cfg_factory("test=false", "~callbacks.gradients")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(  # a live launch of the same job, holding its lock
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"f = open({str(run_dir / '.job.lock')!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX); f.write(f'process {os.getpid()}'); f.flush()\n"
         "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobBusy, match=f"being trained by process {holder.pid} "):
            train(cfg)
        assert not (run_dir / "summary.json").exists()  # the other process's files untouched
    finally:
        holder.kill()
        holder.wait()
    train(cfg)  # the holder is gone (killed): its lock went with it
    assert summary(cfg)["status"] == "finished"
