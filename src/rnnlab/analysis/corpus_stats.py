"""Language statistics (D2L 8.3) and the add-k n-gram baseline on the RNN's data split.

    python scripts/corpus_stats.py                           # the Time Machine, word tokens
    python scripts/corpus_stats.py data.token=char
    python scripts/corpus_stats.py data.path=big.txt ngram.ks=[0.5,0.05] zipf.rank_min=1

The run dir gets report.md (top uni/bi/trigrams, distinct n-gram counts, Zipf exponents with the
rank range used, the perplexity table), zipf.png (log-log count vs rank), ngram_ppl.png and
ngram.json ({"best": {"n", "k", "val_ppl", "test_ppl"}, "table": [...], "zipf": ..., ...}), the
baseline a neural model on the same data.token must beat. Returns the best val perplexity.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rnnlab.config.build import build
from rnnlab.config.saved import save_config

NAMES = {1: "unigram", 2: "bigram", 3: "trigram"}


def _show(vocab, ids, token: str) -> str:
    toks = vocab.to_tokens(list(ids))
    if token == "char":
        return "`" + "".join(toks).replace(" ", "␣") + "`"
    return " ".join(toks)


def _zipf_plot(counts, fits: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for n, fit in fits.items():
        f = np.sort(counts.counts[n - 1])[::-1]
        line = ax.plot(np.arange(1, len(f) + 1), f, lw=1.2,
                       label=f"{NAMES[n]} (s = {fit['exponent']:.2f})")[0]
        r = np.arange(fit["rank_min"], fit["rank_max"] + 1)
        ax.plot(r, np.exp(fit["intercept"]) * r ** -fit["exponent"], "--", lw=1,
                color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="rank", ylabel="frequency n(x)",
           title="Zipf's law: count vs rank (dashed: fit over its rank range)")
    ax.legend()
    fig.tight_layout()
    return fig


def _ppl_plot(table: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for k in sorted({row["k"] for row in table}, reverse=True):
        rows = [row for row in table if row["k"] == k]
        ax.plot([r["n"] for r in rows], [r["val_ppl"] for r in rows], "o-", label=f"k = {k:g}")
    ax.set(yscale="log", xlabel="n", ylabel="val perplexity", title="add-k n-gram LM")
    ax.set_xticks(sorted({row["n"] for row in table}))
    ax.legend()
    fig.tight_layout()
    return fig


def corpus_stats(cfg: DictConfig) -> float:
    import json
    import logging
    import time

    import matplotlib.pyplot as plt
    import numpy as np

    from rnnlab.models.ngram import NGramCounts, perplexity_table, zipf_fit

    log = logging.getLogger("rnnlab.corpus_stats")
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    save_config(cfg, out_dir)
    orders = sorted({int(n) for n in cfg.ngram.orders})
    ks = sorted({float(k) for k in cfg.ngram.ks}, reverse=True)
    if not orders or orders[0] < 1 or not ks or min(ks) <= 0:
        raise ValueError(f"ngram.orders={orders} must be positive integers and ngram.ks={ks} "
                         f"positive numbers")
    if cfg.stats.split not in ("train", "all"):
        raise ValueError(f"stats.split={cfg.stats.split!r} is unknown; use one of "
                         f"['train', 'all']")
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    vocab, token, V = dm.vocab, cfg.data.token, len(dm.vocab)
    splits = {name: dm.corpus[name].numpy().astype(np.int64) for name in ("train", "val", "test")}
    t0 = time.time()
    max_n = max(orders[-1], 3, int(cfg.stats.max_distinct_n))
    lm_counts = NGramCounts(splits["train"], max_n, V)
    counts = lm_counts if cfg.stats.split == "train" else \
        NGramCounts(np.concatenate(list(splits.values())), max_n, V)
    count_s = time.time() - t0
    fits = {n: zipf_fit(counts.counts[n - 1], cfg.zipf.rank_min, cfg.zipf.rank_max,
                        cfg.zipf.min_count) for n in (1, 2, 3)}
    t0 = time.time()
    held = {name: ids for name, ids in splits.items() if name != "train" and len(ids) >= 2}
    table = perplexity_table(lm_counts, held, orders, ks)
    score_s = time.time() - t0
    if "val" not in held:
        raise ValueError("the val split is empty; the n-gram baseline is chosen on val, so "
                         "give data.splits a val fraction")
    best = min(table, key=lambda row: row["val_ppl"])
    distinct = {n: counts.distinct(n) for n in range(1, max_n + 1)}

    figs = {"zipf": _zipf_plot(counts, fits), "ngram_ppl": _ppl_plot(table)}
    for tag, fig in figs.items():
        fig.savefig(out_dir / f"{tag}.png", dpi=120)
        plt.close(fig)
    result = {
        "token": token, "corpus": str(dm.path or Path(cfg.data.data_dir) / "timemachine.txt"),
        "preprocess": cfg.data.preprocess, "vocab_size": V, "stats_split": cfg.stats.split,
        # what a report checks against its runs' data before it puts this baseline beside them
        "path": cfg.data.path, "max_tokens": cfg.data.max_tokens,
        "splits": list(cfg.data.splits), "min_freq": cfg.data.min_freq,
        "split_tokens": {name: len(ids) for name, ids in splits.items()},
        "best": best, "table": table, "zipf": {str(n): fit for n, fit in fits.items()},
        "distinct": {str(n): d for n, d in distinct.items()},
        "timing_s": {"count": round(count_s, 3), "score": round(score_s, 3),
                     "total": round(time.time() - started, 3)},
    }
    (out_dir / "ngram.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.md").write_text(_report(result, counts, vocab, token, cfg))
    log.info("Zipf exponents: %s", {NAMES[n]: round(f["exponent"], 3) for n, f in fits.items()})
    log.info("best add-k n-gram: n=%d k=%g val ppl %.3f test ppl %.3f", best["n"], best["k"],
             best["val_ppl"], best.get("test_ppl", float("nan")))
    log.info("report in %s", out_dir)
    return best["val_ppl"]


def _report(result: dict, counts, vocab, token: str, cfg) -> str:
    top = int(cfg.stats.top)
    tops = {n: counts.top(n, top) for n in (1, 2, 3)}
    lines = [f"# Language statistics: {result['corpus']} ({token} tokens)", "",
             f"Preprocessing `{result['preprocess']}`, vocabulary {result['vocab_size']} (from "
             f"the train split, `<unk>` = 0), split tokens {result['split_tokens']}. Statistics "
             f"are counted on the `{result['stats_split']}` split.", "",
             f"## The {top} most frequent n-grams", "",
             "| rank | unigram | count | bigram | count | trigram | count |", "|---" * 7 + "|"]
    for r in range(top):
        cells = [str(r + 1)]
        for n in (1, 2, 3):
            cells += ([_show(vocab, tops[n][r][0], token), str(tops[n][r][1])]
                      if r < len(tops[n]) else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Distinct n-grams", "", "| n | distinct | of V^n possible |", "|---|---|---|"]
    for n, d in result["distinct"].items():
        lines.append(f"| {n} | {d} | {d / float(result['vocab_size']) ** int(n):.3g} |")
    lines += ["", "## Zipf's law", "",
              f"Least squares of log count on log rank (count ~ rank^-s) over ranks "
              f"zipf.rank_min={cfg.zipf.rank_min}..zipf.rank_max={cfg.zipf.rank_max}, clipped to "
              f"the ranks with count >= zipf.min_count={cfg.zipf.min_count}.", "",
              "| n-gram | exponent s | rank range used | R^2 |", "|---|---|---|---|"]
    for n, fit in result["zipf"].items():
        lines.append(f"| {NAMES[int(n)]} | {fit['exponent']:.3f} | {fit['rank_min']}.."
                     f"{fit['rank_max']} | {fit['r2']:.3f} |")
    lines += ["", "![zipf](zipf.png)", "", "## Add-k n-gram language model", "",
              "P(w | c) = (#(c, w) + k) / (#c + k V), trained on the train split, scored on "
              "positions 1..L-1 of val and test (as the RNN), shorter histories at the start.", "",
              "| n | k | val ppl | test ppl |", "|---|---|---|---|"]
    for row in result["table"]:
        test = f"{row['test_ppl']:.3f}" if "test_ppl" in row else "-"
        lines.append(f"| {row['n']} | {row['k']:g} | {row['val_ppl']:.3f} | {test} |")
    b = result["best"]
    lines += ["", f"**Baseline** (best val): n={b['n']}, k={b['k']:g}: val ppl "
              f"{b['val_ppl']:.3f}, test ppl {b.get('test_ppl', float('nan')):.3f}.", "",
              "![ppl](ngram_ppl.png)", ""]
    return "\n".join(lines)
