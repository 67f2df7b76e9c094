"""The registry's checks, the derived corpora, and what a rerun would run (no training here)."""

import json

import pytest
from omegaconf import OmegaConf

from rnnlab.claims.registry import RegistryError, check, load, variants_needed
from rnnlab.claims.runner import job_key, missing_jobs, train_command
from rnnlab.claims.texts import reverse_splits, shuffle_blocks, split_bounds

ISSUE_CLAIMS = {"kstep_error", "forward_vs_backward", "time_ordered_split", "zipf", "laplace_poor",
                "sampling_both_train", "untrained_is_uniform", "warmup_helps",
                "clipping_stability", "clipping_not_vanishing", "detach_saves_compute",
                "framework_faster", "truncation", "matrix_powers"}


def test_registry_has_every_claim_of_the_issue_and_budgets_compose():
    for budget in ("smoke", "default"):
        cfg = load([f"budget={budget}"])
        assert {c.id for c in cfg.claims} == ISSUE_CLAIMS
        assert len(cfg.budget.seeds) >= 2
    assert "untrained" in variants_needed(cfg.claims)


def _claims(**change):
    claim = {"id": "x", "section": "8.1", "claim": "c", "measurement": "m", "needs": ["base"],
             "levels": {"a": {"run": "base", "key": "test_ppl"}, "b": {"measure": "constant",
                                                                      "value": 1}},
             "compare": [{"a": "a", "b": "b", "expect": "<"}]}
    claim.update(change)
    return [OmegaConf.create(claim)]


def test_check_refuses_what_cannot_run():
    check(_claims())
    with pytest.raises(RegistryError, match="not in its needs"):
        check(_claims(needs=["reversed"]))
    with pytest.raises(RegistryError, match="neither a variant"):
        check(_claims(needs=["base", "nosuch"]))
    with pytest.raises(RegistryError, match="not one of its levels"):
        check(_claims(compare=[{"a": "a", "b": "zz", "expect": "<"}]))
    with pytest.raises(RegistryError, match="expect"):
        check(_claims(compare=[{"a": "a", "b": "b", "expect": "<<"}]))


def test_reversed_text_holds_out_the_same_characters():
    text = "abcdefghijklmnopqrst"
    rev = reverse_splits(text, (0.5, 0.25, 0.25))
    a, b = split_bounds(len(text), (0.5, 0.25, 0.25))
    assert rev[a:b] == text[a:b][::-1] and rev[b:] == text[b:][::-1] and rev[:a] == text[:a][::-1]
    shuffled = shuffle_blocks(text, 3)
    assert sorted(shuffled) == sorted(text) and shuffled != text


def _job(sweep, n, variant, seed, status):
    d = sweep / f"seed_{seed}" / f"{n}_claims-variant={variant}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(
        {"status": status, "overrides": [f"+claims/variant={variant}", f"seed={seed}"]}))


def test_a_rerun_asks_only_for_what_is_missing(tmp_path):
    sweep = tmp_path / "runs" / "train"
    _job(sweep, 0, "base", 0, "finished")
    _job(sweep, 0, "base", 1, "interrupted")       # killed: resumed from last.ckpt
    _job(sweep, 1, "full", 0, "diverged")          # a result: kept
    (sweep / "seed_1" / "1_claims-variant=full").mkdir()  # killed before its summary
    assert job_key({"overrides": ["+claims/variant=rnn", "seed=2"]}) == ("rnn", 2)
    assert missing_jobs(sweep, ["base", "full"], [0, 1]) == [("base", 1), ("full", 1)]
    (sweep / "seed_1" / "1_claims-variant=full").rmdir()
    _job(sweep, 1, "full", 1, "finished")
    (sweep / "seed_1" / "0_claims-variant=base" / "summary.json").write_text(json.dumps(
        {"status": "finished", "overrides": ["+claims/variant=base", "seed=1"]}))
    assert missing_jobs(sweep, ["base", "full"], [0, 1]) == []


def test_the_sweep_command_is_the_same_on_every_launch(tmp_path):
    cfg = load(["budget=smoke", f"out_dir={tmp_path}"])
    cmd = train_command(cfg, variants_needed(cfg.claims), 1)
    assert cmd == train_command(cfg, variants_needed(cfg.claims), 1)
    assert f"hydra.sweep.dir={tmp_path.resolve() / 'runs' / 'train' / 'seed_1'}" in cmd
    assert "seed=1" in cmd and "--multirun" in cmd


@pytest.mark.slow
def test_variants_compose_with_train_and_the_budget_wins(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rnnlab.claims.registry import CONF, variants

    GlobalHydra.instance().clear()
    got = {}
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        for v in variants():
            got[v] = compose("train", overrides=[
                f"+claims/variant={v}", f"data.data_dir={tmp_path}", "model.core.num_hiddens=8"])
    GlobalHydra.instance().clear()
    assert got["full"].bptt.mode == "full" and got["randomized"].bptt.mode == "randomized"
    assert got["rnn"].model.core.kind == "rnn" and got["rnn"].model.core.cpu_kernel == "torch"
    assert got["random"].data.sampling == "random" and got["untrained"].train is False
    assert got["highlr_noclip"].trainer.gradient_clip_val is None
    assert got["highlr_clip"].model.optimizer.lr == got["highlr_noclip"].model.optimizer.lr == 4
    assert got["reversed"].data.path == f"{tmp_path}/reversed.txt"
    assert all(c.model.core.num_hiddens == 8 for c in got.values())  # the command line wins
