"""Text generation (D2L 8.5.4): warm up on a prefix, then predict greedily or by sampling.

    model = load_checkpoint("outputs/runs/.../checkpoints/last.ckpt")
    print(generate(model, "time traveller", num_preds=50))

A checkpoint carries the resolved config and the vocabulary, so nothing else is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rnnlab.config import checks
from rnnlab.config.build import build
from rnnlab.config.saved import upgrade_targets
from rnnlab.models.lm import LanguageModel
from rnnlab.text.vocab import Vocab, join_tokens, preprocess, tokenize

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(
    model: LanguageModel,
    prefix: str,
    num_preds: int = 50,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """`prefix` followed by `num_preds` predicted tokens; temperature 0 is greedy (the book).
    The prefix gets the training text's preprocessing first (e.g. lower-case for `letters`);
    the model carries its vocabulary and tokenization (`model.vocab`, `model.token`)."""
    checks.temperature(temperature)  # also before torch, in check_command_line
    was_training = model.training
    model.eval()
    vocab, token = model.vocab, model.token
    tokens = tokenize(preprocess(prefix, model.preprocess), token)
    if not tokens:
        raise ValueError("prefix is empty; give at least one token to warm up on, e.g. "
                         "prefix='time traveller'")
    ids = vocab[tokens]
    if all(i == vocab.unk for i in ids):
        log.warning("prefix %r has no token in the vocabulary; every token maps to <unk>", prefix)
    state = tuple(s.to(model.device) for s in model.begin_state(1))
    inputs = torch.tensor([ids], device=model.device)
    logits, state = model(inputs, state)  # warm-up: the state absorbs the whole prefix
    out = []
    for _ in range(num_preds):
        last = logits[-1]
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, -1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=model.device), state)
    model.train(was_training)
    return join_tokens(tokens + vocab.to_tokens(out), token)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LanguageModel:
    """Rebuild the model from the config and vocab stored in a training checkpoint."""
    checks.checkpoint_path(path)  # a run dir: the message names its last.ckpt
    path = Path(path).expanduser()
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        cfg = OmegaConf.create(upgrade_targets(ckpt["run_config"]))  # old names too
        vocab = Vocab.from_dict(ckpt["vocab"])
    except Exception as e:  # truncated file, not a checkpoint, or one from another program
        raise ValueError(f"ckpt_path={path} is not a readable rnnlab checkpoint ({e}); "
                         f"use checkpoints/last.ckpt or best*.ckpt of a training run") from e
    model = build(cfg.model, vocab_size=len(vocab))
    model.load_state_dict(ckpt["state_dict"])
    model.vocab, model.token = vocab, cfg.data.token
    model.preprocess = cfg.data.preprocess
    return model
