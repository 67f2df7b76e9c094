"""A claim level's value for each seed: a training run's summary.json key, or a measure.

    from rnnlab.claims.measures import Measures
    m = Measures(cfg, out_dir, runs)      # runs: {variant: {seed: summary}} (rnnlab.claims.runner)
    m.values({"run": "base", "key": "test_ppl"}, seeds)      # [5.61, 5.58, 5.66]
    m.values({"measure": "zipf", "n": 2}, seeds)

Measures (registry `measure:`), each through the library's public functions:
  forecast   k-step-ahead MSE of the MLP, from scripts/forecast.py's summary.json per seed;
  zipf       word n-gram Zipf exponent (models.ngram.zipf_fit) on the seed's part of the book;
  laplace    add-1 char n-gram test ppl, the order chosen on val (rnnlab.models.ngram);
  kneser_ney Kneser-Ney char n-gram test ppl, the order chosen on val (rnnlab.models.kneser_ney);
  vocab_size |V| of the runs' training split (rnnlab.text.vocab.encode_corpus, as the DataModule);
  warmup     ppl of the characters after a prefix, warmed up on it or not (the base checkpoint);
  constant   the level's `value`.
A run level's `key: seconds_per_update` is derived from the summary (seconds_per_update()).
Deterministic measures give the same value for every seed. A missing run or key gives None.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rnnlab.claims.texts import book, split_bounds
from rnnlab.models.kneser_ney import KneserNeyLM
from rnnlab.models.ngram import AddKLM, NGramCounts, zipf_fit
from rnnlab.text.vocab import encode_corpus

ZIPF = {"rank_min": 10, "rank_max": 1000, "min_count": 2}  # scripts/corpus_stats.py's defaults


def _number(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


class Measures:
    def __init__(self, cfg, out_dir: Path, runs: dict[str, dict[int, dict]]):
        self.cfg, self.out, self.runs = cfg, Path(out_dir), runs
        self.forward = (self.out / "corpus" / "forward.txt").read_text()

    def values(self, level, seeds: Sequence[int]) -> list[float | None]:
        level = dict(level)
        if "run" in level:
            summaries = [self.runs.get(level["run"], {}).get(s) or {} for s in seeds]
            if level["key"] == "seconds_per_update":
                return [self.seconds_per_update(x) for x in summaries]
            return [_number(x.get(level["key"])) for x in summaries]
        name = level.pop("measure")
        if name in ("laplace", "kneser_ney", "vocab_size", "constant"):
            v = float(level["value"]) if name == "constant" else getattr(self, name)()
            return [v] * len(seeds)
        if name == "zipf":
            return [self.zipf(int(level["n"]), i, len(seeds)) for i in range(len(seeds))]
        return [getattr(self, name)(seed=s, **level) for s in seeds]

    def seconds_per_update(self, summary: dict) -> float | None:
        """Training seconds per optimizer step: the tokens a step reads (training tokens x
        epochs / steps) over tokens/s. Derived, as summary.json has no per-step time."""
        n_train = split_bounds(len(self.forward), self.cfg.splits)[0]
        steps, tps = summary.get("global_step"), _number(summary.get("tokens_per_s"))
        if not steps or not tps or not summary.get("epochs"):
            return None
        return n_train * summary["epochs"] / steps / tps

    # ---- char corpus of the runs, split as TextDataModule splits it --------------------------
    @functools.cached_property
    def _splits(self) -> tuple[dict[str, np.ndarray], int]:
        ids, vocab = encode_corpus(self.forward, "char", self.cfg.splits[0])
        a, b = split_bounds(len(ids), self.cfg.splits)
        ids = ids.numpy().astype(np.int64)
        return {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}, len(vocab)

    def vocab_size(self) -> float:
        return float(self._splits[1])

    @functools.cache  # noqa: B019 (one Measures per reproduce call)
    def laplace(self) -> float:
        s, V = self._splits
        orders = list(self.cfg.budget.ngram.laplace_orders)
        counts = NGramCounts(s["train"], max(orders), V)
        best = min(orders, key=lambda n: AddKLM(counts, n, 1.0).perplexity(s["val"]))
        self.chosen = {**getattr(self, "chosen", {}), "laplace_order": best}
        return AddKLM(counts, best, 1.0).perplexity(s["test"])

    @functools.cache  # noqa: B019
    def kneser_ney(self) -> float:
        s, V = self._splits
        orders = list(self.cfg.budget.ngram.kn_orders)
        lms = {n: KneserNeyLM(s["train"], n, V) for n in orders}
        best = min(orders, key=lambda n: lms[n].perplexity(s["val"]))
        self.chosen = {**getattr(self, "chosen", {}), "kneser_ney_order": best}
        return lms[best].perplexity(s["test"])

    # ---- words of the whole book, one disjoint part per seed --------------------------------
    @functools.cached_property
    def _words(self) -> np.ndarray:
        words = book(self._data_dir()).split()
        index: dict[str, int] = {}
        return np.array([index.setdefault(w, len(index)) for w in words], dtype=np.int64)

    def _data_dir(self) -> Path:
        import os

        root = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[3]))
        return Path(os.environ.get("DATA_DIR", root / "outputs" / "data"))

    def zipf(self, n: int, part: int, parts: int) -> float | None:
        ids = self._words
        lo, hi = part * len(ids) // parts, (part + 1) * len(ids) // parts
        chunk = ids[lo:hi]
        counts = NGramCounts(chunk, n, int(ids.max()) + 1)
        try:
            return zipf_fit(counts.counts[n - 1], **ZIPF)["exponent"]
        except ValueError:  # too few n-grams in a part: the value is missing, not invented
            return None

    # ---- forecasting (scripts/forecast.py's summary.json) -------------------------------------
    def forecast(self, seed: int, k: int) -> float | None:
        path = self.out / "runs" / "forecast" / f"seed_{seed}" / "summary.json"
        if not path.is_file():
            return None
        return _number(json.loads(path.read_text()).get("mse", {}).get(str(k)))

    # ---- warm-up (D2L 8.5.4) ------------------------------------------------------------------
    def warmup(self, seed: int, warm: bool) -> float | None:
        got = self._warmup(seed)
        return None if got is None else got[bool(warm)]

    @functools.cache  # noqa: B019
    def _warmup(self, seed: int) -> dict[bool, float] | None:
        from rnnlab.models.generate import load_checkpoint

        summary = self.runs.get("base", {}).get(seed) or {}
        ckpt = summary.get("test_ckpt")
        if not ckpt or not Path(ckpt).is_file():
            return None
        model = load_checkpoint(ckpt).eval()
        w = self.cfg.budget.warmup
        P, M = int(w.prefix), int(w.predict)
        test = self.forward[split_bounds(len(self.forward), self.cfg.splits)[1]:]
        ids = torch.tensor(model.vocab[list(test)], dtype=torch.long)
        places = torch.linspace(0, len(ids) - P - M - 1, int(w.places)).long().unique()
        rows = torch.stack([ids[p : p + P + M] for p in places])  # prefix + the M targets
        targets = rows[:, P:]
        out = {}
        with torch.no_grad():
            for warm in (True, False):
                # cold: from the initial state with only the last prefix character as input
                X = rows[:, : P + M - 1] if warm else rows[:, P - 1 : P + M - 1]
                logits, _ = model(X, model.begin_state(len(rows)))
                logits = logits.reshape(X.shape[1], len(rows), -1)[-M:]  # time-major
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).double(), targets.T.reshape(-1))
                out[warm] = float(torch.exp(nll))
        return out
