"""The word n-gram read by characters (evaluation.word_completion): causal, sums to 1, knows the
training words and their order, learns the words of the text it reads, and each split starts
from the training counts."""

import numpy as np
import pytest
import torch

from rnnlab.evaluation.word_completion import WordCompletion

LETTERS = " abcdefghijklmnopqrstuvwxyz"  # the separator is index 0
V = len(LETTERS)


def ids(text: str) -> torch.Tensor:
    return torch.tensor([LETTERS.index(c) for c in text])


TRAIN = ids("the cat sat on the mat and the dog sat on the log " * 5)


def prob(expert: WordCompletion, text: str, nxt: str) -> float:
    logp, _, _ = expert.stream_log_probs(ids(text + nxt))
    return float(np.exp(logp[-1, LETTERS.index(nxt)]))


@pytest.mark.parametrize("p", [3, 17, 40])
def test_each_row_is_causal_and_sums_to_one(p):
    expert = WordCompletion(TRAIN, separator=0, vocab_size=V, order=3)
    text = ids("the cat sat on the log and the dog sat on the mat")
    changed = text.clone()
    changed[p] = (text[p] % (V - 1)) + 1 if text[p] else 5  # another letter (a space: "e")
    a, ma, la = expert.stream_log_probs(text)
    b, mb, lb = expert.stream_log_probs(changed)
    # row i is P(. | text[:i+1]): rows before p have not read text[p] (row p-1 predicts it)
    np.testing.assert_array_equal(a[:p], b[:p])
    np.testing.assert_array_equal(ma[:p], mb[:p])
    np.testing.assert_array_equal(la[:p], lb[:p])
    assert not np.array_equal(a[p:], b[p:])
    np.testing.assert_allclose(np.exp(a).sum(-1), 1.0, atol=1e-9)


def test_it_completes_known_words_and_uses_the_words_before():
    expert = WordCompletion(TRAIN, separator=0, vocab_size=V, order=3)
    assert prob(expert, "the ca", "t") > 0.9  # the only known word starting "ca"
    # after "the" come cat, mat, dog, log; after "sat on the" only mat and log
    assert prob(expert, "sat on the ", "m") > 2 * prob(expert, "sat on the ", "c")
    assert prob(expert, "the mat and ", "t") > 0.8  # "and" is always followed by "the"


def test_below_the_top_order_a_word_counts_the_words_it_followed_not_its_frequency():
    # "york" 20 times, always after "new"; "yak" once: after a word never seen, both followed one
    # distinct word, so Kneser-Ney gives them the same share (raw counts would give york 20x)
    expert = WordCompletion(ids("new york " * 20 + "the cat the yak "), separator=0,
                            vocab_size=V, order=2)
    assert prob(expert, "zzz y", "o") == pytest.approx(prob(expert, "zzz y", "a"))
    assert prob(expert, "new y", "o") > 0.9  # after "new" the bigram knows


def test_a_word_it_has_not_seen_is_learned_once_read_and_forgotten_after_the_split():
    expert = WordCompletion(TRAIN, separator=0, vocab_size=V, order=2)
    logp, matched, length = expert.stream_log_probs(ids("the zebra sat the zebra sat"))
    z1, z2 = 4, 18  # the rows that predict "e" in the first and the second "zebra"
    assert not matched[z1] and matched[z2] and length[z1] == length[z2] == 1
    e = LETTERS.index("e")
    assert logp[z1, e] == pytest.approx(np.log(1 / V))  # nothing known: uniform
    assert np.exp(logp[z2, e]) > 0.5
    again, _, _ = expert.stream_log_probs(ids("the zebra sat the zebra sat"))
    np.testing.assert_array_equal(logp, again)  # the next split starts from the training counts


@pytest.mark.parametrize("kw, match", [({"order": 0}, "order=0"), ({"discount": 1.0}, "discount"),
                                       ({"floor": 0.0}, "floor")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        WordCompletion(TRAIN, separator=0, vocab_size=V, **kw)
