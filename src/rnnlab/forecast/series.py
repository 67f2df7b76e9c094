"""Autoregressive forecasting of a noisy sine wave (D2L 8.1): the book's MLP on `tau` lagged values,
and a latent-autoregressive variant whose RNN hidden state h_t summarises x_1..x_t.

    python scripts/forecast.py                               # T=1000, tau=4, MLP + latent RNN
    python scripts/forecast.py data.tau=16 latent.model.core.kind=gru latent.enabled=false

    from rnnlab.forecast.series import SeriesDataModule, LagMLP, evaluate
    dm = SeriesDataModule(T=1000, tau=4, n_train=600); dm.setup()
    model = LagMLP(tau=4); pl.Trainer(max_epochs=5).fit(model, datamodule=dm)
    ev = evaluate(model, dm, ks=(1, 4, 16, 64)); ev["mse"][64]

Time index j = 0..T-1 (the book's x_{j+1}). A *rollout from origin o* knows the true x[:o] and
predicts x[o], x[o+1], ..., feeding on its own predictions after the first step. Then
- one-step predictions: rollouts of length 1 from every origin o = tau..T-1;
- the multi-step prediction: one rollout from o = n_train + tau (the end of the training data,
  whose last label is x[n_train + tau - 1]) to the end of the series;
- k-step predictions: rollouts of length max(ks) from the origins o = tau..T-max(ks) (the book's
  figure), column k-1 predicting x[o+k-1]. All k share these origins, as in the book.
MSEs are against the observed (noisy) x; `mse_clean` is against the noise-free sine, and
`mse_heldout` keeps only targets beyond the training data (j >= n_train + tau).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnnlab.config.checks import series_data


class SeriesDataModule(pl.LightningDataModule):
    """x_j = sin(freq * (j + 1)) + N(0, noise^2), j < T, seeded. Training data: the first
    `n_train` lag-feature rows (x[i:i+tau] -> x[i+tau]) or, with `window`, every sequence
    window of window+1 points inside x[:n_train + tau] (the same points) for a recurrent model."""

    def __init__(self, T: int = 1000, freq: float = 0.01, noise: float = 0.2, tau: int = 4,
                 n_train: int = 600, batch_size: int = 16, window: int | None = None,
                 seed: int = 0):
        super().__init__()
        series_data(T=T, noise=noise, tau=tau, n_train=n_train, batch_size=batch_size,
                    window=window)  # rnnlab.config.checks: before torch too
        self.T, self.freq, self.noise, self.tau = T, freq, noise, tau
        self.n_train, self.batch_size, self.window, self.seed = n_train, batch_size, window, seed
        self.x = self.clean = self.features = self.labels = None

    def setup(self, stage: str | None = None) -> None:
        if self.x is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        time = torch.arange(1, self.T + 1, dtype=torch.float32)
        self.clean = torch.sin(self.freq * time)
        self.x = self.clean + torch.normal(0.0, self.noise, (self.T,), generator=gen)
        T, tau = self.T, self.tau
        self.features = torch.stack([self.x[i : T - tau + i] for i in range(tau)], 1)
        self.labels = self.x[tau:]

    def train_dataloader(self) -> DataLoader:
        if self.window is None:
            ds = TensorDataset(self.features[: self.n_train], self.labels[: self.n_train])
        else:
            seg = self.x[: self.n_train + self.tau]
            starts = torch.arange(len(seg) - self.window)
            ds = TensorDataset(seg[starts[:, None] + torch.arange(self.window + 1)])
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=gen)


class LagMLP(pl.LightningModule):
    """The book's model: x[t-tau:t] -> Linear(tau, 10) -> ReLU -> Linear(10, 1), MSE, Adam."""

    def __init__(self, tau: int = 4, num_hiddens: int = 10, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.tau, self.lr = tau, lr
        self.net = nn.Sequential(nn.Linear(tau, num_hiddens), nn.ReLU(), nn.Linear(num_hiddens, 1))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X).squeeze(-1)

    def training_step(self, batch, batch_idx):
        X, y = batch
        loss = F.mse_loss(self(X), y)
        self.log("train/mse", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, origins: torch.Tensor, steps: int) -> torch.Tensor:
        """(len(origins), steps): from each origin o, predictions of x[o], ..., x[o+steps-1]."""
        if int(origins.min()) < self.tau:
            raise ValueError(f"an origin needs tau={self.tau} known values before it")
        window = x[origins[:, None] - self.tau + torch.arange(self.tau)]
        preds = []
        for _ in range(steps):
            p = self(window)
            preds.append(p)
            window = torch.cat([window[:, 1:], p[:, None]], 1)
        return torch.stack(preds, 1)


def _top_hidden(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The last layer's hidden state, (B, H): TorchRNN keeps (layers, B, H), ScratchRNN (B, H)."""
    return state[0][-1] if state[0].dim() == 3 else state[0]


class LatentAR(pl.LightningModule):
    """Latent autoregression: h_t = core(x_t, h_{t-1}), x_{t+1} ~ Linear(h_t). Any core of
    `rnnlab.models.cores` fed float inputs (T, B, 1); trained with teacher forcing on windows, the
    first `warmup` steps of each window (too little history) left out of the loss."""

    def __init__(self, core: Callable[..., nn.Module], lr: float = 0.01, warmup: int = 4):
        super().__init__()
        self.save_hyperparameters(ignore=["core"])
        self.lr, self.warmup = lr, warmup
        self.core = core(input_size=1)
        self.head = nn.Linear(self.core.num_hiddens, 1)

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs (T, B) -> predictions of the next values (T, B), final state."""
        if state is None:
            state = self.core.begin_state(inputs.shape[1])
        outputs, state = self.core(inputs.unsqueeze(-1), state)
        return self.head(outputs).squeeze(-1), state

    def training_step(self, batch, batch_idx):
        seq = batch[0].T  # (window + 1, B), time-major
        preds, _ = self(seq[:-1])
        w = min(self.warmup, len(preds) - 1)
        loss = F.mse_loss(preds[w:], seq[1:][w:])
        self.log("train/mse", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, origins: torch.Tensor, steps: int) -> torch.Tensor:
        """As `LagMLP.rollout`, the state at origin o having read all of x[:o]."""
        if int(origins.min()) < 1:
            raise ValueError("an origin needs at least one known value before it")
        state, states = self.core.begin_state(1), []
        for t in range(int(origins.max())):  # states[t]: after reading x[:t+1]
            _, state = self.core(x[t].view(1, 1, 1), state)
            states.append(state)
        bdim = 1 if state[0].dim() == 3 else 0
        picked = [states[o - 1] for o in origins.tolist()]
        state = tuple(torch.cat([s[j] for s in picked], bdim) for j in range(len(state)))
        p = self.head(_top_hidden(state)).squeeze(-1)
        preds = [p]
        for _ in range(steps - 1):
            outputs, state = self.core(p.view(1, -1, 1), state)
            p = self.head(outputs[-1]).squeeze(-1)
            preds.append(p)
        return torch.stack(preds, 1)


def _mse(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    return float(F.mse_loss(pred, target)) if len(pred) else None


def evaluate(model, dm: SeriesDataModule, ks: Sequence[int] = (1, 4, 16, 64)) -> dict:
    """One-step, multi-step and k-step predictions of a model with `rollout`, and their MSEs."""
    ks = sorted({int(k) for k in ks})
    x, clean, tau, T = dm.x, dm.clean, dm.tau, dm.T
    max_k, start = ks[-1], dm.n_train + dm.tau
    if ks[0] < 1 or T - max_k < tau:
        raise ValueError(f"ks={ks} must be positive and max(ks) <= T - tau = {T - tau}")
    model.eval()
    one = model.rollout(x, torch.arange(tau, T), 1)[:, 0]  # predicts x[tau:]
    multi = model.rollout(x, torch.tensor([start]), T - start)[0]  # predicts x[start:]
    origins = torch.arange(tau, T - max_k + 1)
    kpred = model.rollout(x, origins, max_k)
    out = {"one_step": one, "multi_step": multi, "origins": origins, "kstep": kpred,
           "mse": {}, "mse_heldout": {}, "mse_clean": {}}
    for k in ks:
        idx, pred = origins + k - 1, kpred[:, k - 1]
        held = idx >= start
        out["mse"][k] = _mse(pred, x[idx])
        out["mse_heldout"][k] = _mse(pred[held], x[idx][held])
        out["mse_clean"][k] = _mse(pred, clean[idx])
    out["one_step_mse"] = _mse(one, x[tau:])
    out["one_step_mse_heldout"] = _mse(one[start - tau :], x[start:])
    out["multi_step_mse"] = _mse(multi, x[start:])
    return out
