"""The training job end to end, in-process with Hydra's compose API, on a tiny corpus."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from rnnlab.models.generate import generate, load_checkpoint
from rnnlab.training.run import train

pytestmark = pytest.mark.slow  # the whole module runs training end to end

COMBOS = [(m, s, b) for m in ("rnn_scratch", "rnn", "gru", "lstm")
          for s in ("random", "sequential") for b in ("regular", "randomized", "full")
          if not (b == "full" and s == "random")]


def summary_of(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


@pytest.mark.parametrize("model, sampling, bptt", COMBOS)
def test_every_model_sampling_bptt_trains_to_a_finite_perplexity(cfg_factory, model, sampling,
                                                                 bptt):
    # full BPTT makes one update per epoch: give it the epochs (and Adam) to learn in
    full = ["trainer.max_epochs=25", "model.optimizer._target_=torch.optim.Adam",
            "model.optimizer.lr=0.02"] if bptt == "full" else []
    cfg = cfg_factory(f"model={model}", f"data.sampling={sampling}", f"bptt={bptt}",
                      "callbacks.sample_text.every_n_epochs=0", "test=false", *full)
    best = train(cfg)
    s = summary_of(cfg)
    assert s["status"] == "finished" and s["bptt"] == bptt and s["sampling"] == sampling
    vocab = len(load_checkpoint(s["checkpoints"]["last"]).vocab)
    assert math.isfinite(best) and best > 1
    if bptt == "full":  # one update per epoch: the whole stream at once
        assert s["global_step"] == s["epochs"] == 25
    assert best < 0.7 * vocab  # learned something: well below uniform guessing


def test_summary_checkpoints_and_tensorboard(cfg_factory):
    cfg = cfg_factory("trainer.max_epochs=2")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    s = summary_of(cfg)
    for key in ("best_val_ppl", "final_val_ppl", "test_ppl", "tokens_per_s", "wall_time_s",
                "epochs", "clipped_fraction", "max_grad_norm", "overrides"):
        assert s[key] is not None, key
    assert s["epochs"] == 2 and s["best_val_ppl"] <= s["final_val_ppl"]
    assert Path(s["checkpoints"]["last"]).is_file() and Path(s["checkpoints"]["best"]).is_file()
    assert (out / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"perplexity/train", "perplexity/val", "perplexity/test", "train/grad_norm",
            "train/tokens_per_s"} <= scalars
    assert "epoch" not in scalars and "hp_metric" not in scalars
    assert len(acc.Scalars("train/grad_norm")) == s["global_step"]  # every step
    assert any("sample" in t for t in acc.Tags()["tensors"])  # generated text, text tab


def test_same_seed_same_validation_perplexity(cfg_factory, tmp_path):
    first = train(cfg_factory("data.sampling=random", "test=false"))
    second = train(cfg_factory("data.sampling=random", "test=false"))
    other = train(cfg_factory("data.sampling=random", "test=false", "seed=1"))
    assert first == second and first != other


def test_resume_from_last_checkpoint_continues_the_step_count(cfg_factory):
    cfg = cfg_factory("test=false")
    train(cfg)
    s1 = summary_of(cfg)
    last = s1["checkpoints"]["last"]
    cfg2 = cfg_factory("test=false", "trainer.max_epochs=2", f"ckpt_path={last}")
    train(cfg2)
    s2 = summary_of(cfg2)
    assert s2["global_step"] == 2 * s1["global_step"] and s2["epochs"] == 2


def test_generation_from_the_checkpoint_alone(cfg_factory):
    cfg = cfg_factory("test=false")
    train(cfg)
    model = load_checkpoint(summary_of(cfg)["checkpoints"]["last"])
    text = generate(model, "The Time", num_preds=10)
    assert text.startswith("the time") and len(text) == len("the time") + 10
    assert set(text) <= set(model.vocab.idx_to_token)
    gen = torch.Generator().manual_seed(0)
    sampled = generate(model, "###", num_preds=5, temperature=1.0, generator=gen)
    assert len(sampled) == 1 + 5  # '###' preprocesses to one space, an in-vocabulary token


@pytest.mark.parametrize("model", ["rnn_scratch", "gru"])
def test_clipping_logs_the_norm_before_clipping_and_the_clipped_fraction(cfg_factory, model):
    cfg = cfg_factory(f"model={model}", "trainer.gradient_clip_val=0.001", "test=false")
    train(cfg)
    s = summary_of(cfg)
    assert s["clipped_fraction"] == 1.0 and s["max_grad_norm"] > 0.001


def test_last_checkpoint_is_the_last_epoch_even_when_val_got_worse(cfg_factory):
    # a chaotic run: kernels and precision pinned, as a timed choice changes the last bits
    cfg = cfg_factory("trainer.max_epochs=3", "model.optimizer.lr=20", "test=false",
                      "kernels.tanh=tanh", "kernels.matmul=torch", "kernels.linear=torch",
                      "trainer.precision=32-true")
    train(cfg)
    s = summary_of(cfg)
    last = torch.load(s["checkpoints"]["last"], weights_only=False)
    best = torch.load(s["checkpoints"]["best"], weights_only=False)
    assert last["global_step"] == s["global_step"] and last["epoch"] == 2
    assert best["global_step"] < last["global_step"]  # val got worse after the best epoch


def test_book_rnn_and_best_presets_hold_their_settings_and_run(cfg_factory, tmp_path):
    book = cfg_factory("experiment=book_rnn")
    assert book.model.core._target_ == "rnnlab.models.cores.ScratchRNN" and book.trainer.max_epochs
    tiny = ["experiment=best", "model.core.num_hiddens=16", "model.embedding_dim=8",
            "trainer.max_epochs=2", "ngram_mix.order=4", "eval.lr=[0.01]", "eval.decay=[0]",
            "eval.krause_lr=[0.001]"]
    cfg = cfg_factory(*tiny)
    assert cfg.model.core.kind == "lstm" and cfg.bptt.mode == "randomized"
    assert cfg.model.scheduler._target_ == "rnnlab.models.schedule.CosineSteps"  # not seconds
    assert cfg.callbacks.early_stopping.monitor == "val/ppl" and cfg.eval.dynamic
    got = train(cfg)
    s = summary_of(cfg)
    assert s["status"] == "finished" and got == s["val_ppl_online"]
    assert cfg.ngram_mix.online and cfg.eval.krause and s["dyn_rule"] in ("rms", "krause")
    assert s["model"] == "lstm" and math.isfinite(s["test_ppl_mix"])
    assert s["max_time_cut"] is False
    # the same command again: the same numbers (a budget in steps knows no wall clock)
    again = make_cfg(tmp_path / "again", Path(cfg.data.path), tiny)
    train(again)
    timing = {"wall_time_s", "tokens_per_s", "grad_probe_seconds", "grad_image_seconds",
              "run_dir", "checkpoints", "test_ckpt"}
    assert {k: v for k, v in summary_of(again).items() if k not in timing} == \
        {k: v for k, v in s.items() if k not in timing}


def test_max_time_is_a_guard_that_says_when_it_cut_a_run(cfg_factory):
    cfg = cfg_factory("trainer.max_epochs=10000", "trainer.max_time=00:00:00:02", "test=false")
    train(cfg)
    s = summary_of(cfg)
    assert s["max_time_cut"] is True and s["epochs"] < 10000


def test_held_out_window_length_changes_no_score(cfg_factory, corpus_file):
    import pytorch_lightning as pl

    from rnnlab.text.datamodule import TextDataModule

    cfg = cfg_factory("model=lstm", "test=false")
    train(cfg)
    model = load_checkpoint(summary_of(cfg)["checkpoints"]["last"])
    ppl = {}
    for n in (3, 8, 2048):  # the state is carried across windows: only the speed may differ
        dm = TextDataModule(path=str(corpus_file), batch_size=4, num_steps=8, eval_batch_size=1,
                            eval_num_steps=n)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        ppl[n] = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/ppl"]
    assert ppl[3] == pytest.approx(ppl[8], rel=1e-6)
    assert ppl[2048] == pytest.approx(ppl[8], rel=1e-6)


def test_post_training_scoring_is_on_the_device_the_trainer_used_and_the_console_says_it():
    from types import SimpleNamespace

    from torch import nn

    from rnnlab.training.run import device_line, on_training_device

    model = nn.Linear(3, 2)
    # the meta device stands in for a GPU: a device other than the CPU that the CPU can reach
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")),
                              num_devices=1)
    assert on_training_device(model, trainer) == torch.device("meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert device_line(trainer, "bf16-mixed") == "training on META (meta), precision bf16-mixed"
    cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")),
                          num_devices=1)
    assert device_line(cpu, "32-true") is None  # the plain CPU: no line
    assert device_line(cpu, "bf16-mixed") == "training on CPU (cpu), precision bf16-mixed"


def test_dynamic_evaluation_gets_the_model_on_the_trainers_device(cfg_factory, monkeypatch):
    import rnnlab.training.run as run

    seen = []
    real = run.evaluate_dynamic_rules

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).device)
        return real(model, *args, **kwargs)

    moved = []
    monkeypatch.setattr(run, "evaluate_dynamic_rules", spy)
    monkeypatch.setattr(run, "on_training_device", lambda model, trainer: moved.append(
        trainer.strategy.root_device) or model.to(trainer.strategy.root_device))
    run.train(cfg_factory("trainer.max_epochs=1", "eval.dynamic=true"))
    assert moved == seen == [torch.device("cpu")]
