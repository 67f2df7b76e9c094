"""The synthetic series, MLP and latent-autoregressive rollouts, scripts/forecast.py in-process."""

import json
from functools import partial

import pytest
import torch

from rnnlab.forecast.series import LagMLP, LatentAR, SeriesDataModule, evaluate
from rnnlab.forecast.task import forecast
from rnnlab.models.cores import ScratchRNN, TorchRNN

torch.set_num_threads(1)


def test_series_is_seeded_and_lag_features_line_up():
    a, b, c = (SeriesDataModule(T=200, tau=3, n_train=100, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert torch.allclose(a.clean, torch.sin(0.01 * torch.arange(1, 201.0)))
    assert 0.15 < float((a.x - a.clean).std()) < 0.25  # noise sd 0.2
    assert a.features.shape == (197, 3) and torch.equal(a.features[5], a.x[5:8])
    assert torch.equal(a.labels[5], a.x[8])
    X, y = next(iter(a.train_dataloader()))
    assert X.shape == (16, 3) and y.shape == (16,)
    assert len(a.train_dataloader().dataset) == 100


def test_window_loader_stays_inside_the_training_data():
    dm = SeriesDataModule(T=200, tau=4, n_train=100, window=10, batch_size=8)
    dm.setup()
    (windows,) = dm.train_dataloader().dataset.tensors
    assert windows.shape == (104 - 10, 11)
    assert torch.equal(windows[-1], dm.x[93:104])  # the last training point is x[n_train+tau-1]


@pytest.mark.parametrize("kwargs,match", [
    ({"T": 100, "n_train": 98, "tau": 4}, "no held-out"),
    ({"tau": 0}, "tau"),
    ({"window": 700}, "window"),
])
def test_series_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeriesDataModule(**kwargs)


def test_mlp_rollout_is_the_books_one_step_and_k_step():
    torch.manual_seed(0)
    dm = SeriesDataModule(T=120, tau=4, n_train=60)
    dm.setup()
    model = LagMLP(tau=4).eval()
    with torch.no_grad():
        one = model(dm.features)  # the book: net(features)
    assert torch.allclose(model.rollout(dm.x, torch.arange(4, 120), 1)[:, 0], one)
    # the book's k-step: extend the feature matrix column by column with predictions
    feats = torch.zeros(120 - 4 - 8 + 1, 4 + 8)
    for i in range(4):
        feats[:, i] = dm.x[i : i + 120 - 4 - 8 + 1]
    with torch.no_grad():
        for i in range(4, 12):
            feats[:, i] = model(feats[:, i - 4 : i])
    kpred = model.rollout(dm.x, torch.arange(4, 120 - 8 + 1), 8)
    assert torch.allclose(kpred, feats[:, 4:], atol=1e-6)


@pytest.mark.parametrize("core", [partial(TorchRNN, "gru", num_hiddens=6),
                                  partial(TorchRNN, "lstm", num_hiddens=6, num_layers=2),
                                  partial(ScratchRNN, num_hiddens=6, sigma=0.3)])
def test_latent_rollout_matches_teacher_forcing(core):
    torch.manual_seed(0)
    x = torch.randn(50)
    model = LatentAR(core).eval()
    with torch.no_grad():
        preds, _ = model(x[:-1, None])  # preds[t] predicts x[t+1] from x[:t+1]
    one = model.rollout(x, torch.arange(1, 50), 1)[:, 0]
    assert torch.allclose(one, preds[:, 0], atol=1e-5)
    # two steps from origin o: the second feeds the first prediction back in
    two = model.rollout(x, torch.tensor([10, 20]), 2)
    with torch.no_grad():
        fed = torch.cat([x[:10], two[0, :1]])
        again, _ = model(fed[:, None])
    assert torch.allclose(two[0], again[-2:, 0], atol=1e-5)


def test_evaluate_reports_mse_per_k_with_held_out_and_clean_targets():
    torch.manual_seed(0)
    dm = SeriesDataModule(T=150, tau=4, n_train=80, noise=0.0)
    dm.setup()
    ev = evaluate(LagMLP(tau=4), dm, ks=(4, 1, 16))
    assert list(ev["mse"]) == [1, 4, 16] and ev["kstep"].shape == (150 - 16 - 4 + 1, 16)
    assert ev["multi_step"].shape == (150 - 84,) and ev["one_step"].shape == (146,)
    assert ev["mse"] == pytest.approx(ev["mse_clean"])  # no noise: data == clean signal
    one = float(((ev["one_step"] - dm.x[4:]) ** 2).mean())
    assert ev["one_step_mse"] == pytest.approx(one)
    with pytest.raises(ValueError, match="max"):
        evaluate(LagMLP(tau=4), dm, ks=(1, 200))


@pytest.mark.slow
def test_forecast_script_error_grows_with_k(tmp_path, compose_run):
    out = tmp_path / "run"
    cfg = compose_run("forecast", ["seed=3", "data.T=400", "data.n_train=240",
                                   "trainer.max_epochs=4", "latent.max_epochs=2",
                                   "latent.window=16", "latent.model.core.num_hiddens=8"])
    assert cfg.paths.output_dir == str(out)
    worst = forecast(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["ks"] == [1, 4, 16, 64]
    for name in ("mlp", "latent"):
        mse = summary["models"][name]["mse"]
        assert set(mse) == {"1", "4", "16", "64"}
        assert mse["64"] > mse["1"]  # the chapter's point: errors compound over k steps
        assert summary["models"][name]["multi_step_mse"] > mse["1"]
    assert summary["mse"] == summary["models"]["mlp"]["mse"] and worst == summary["mse"]["64"]
    assert 0.02 < summary["mse"]["1"] < 0.2  # near the noise floor 0.2^2
    table = (out / "forecast.md").read_text()
    assert "| mlp |" in table and "| latent |" in table
    for png in ("forecast_mlp", "kstep_mlp", "forecast_latent", "kstep_latent", "mse_vs_k"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb" / "mlp"), size_guidance={"images": 0}).Reload()
    assert {"forecast_mlp", "kstep_mlp"} <= set(events.Tags()["images"])
    assert "train/mse_epoch" in events.Tags()["scalars"]
