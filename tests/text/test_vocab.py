import json

import pytest
import torch

from rnnlab.text.vocab import (
    Vocab,
    encode_corpus,
    index_dtype,
    kept_share,
    preprocess,
    tokenize,
)


def test_letters_preprocessing_matches_the_book():
    assert preprocess("The Time-Machine, 1895!\nBy H.G.", "letters") == "the time machine by h g "
    assert preprocess("Raw\ttext", "none") == "Raw\ttext"


def test_unicode_letters_keep_every_script_and_letters_keep_a_to_z():
    raw = "Café naïve, 日本語! Привет, мир: हिन्दी 42_x"
    assert preprocess(raw, "letters") == "caf na ve x"
    # letters of any script (and the marks written inside words, as in हिन्दी) stay, lower-case
    assert preprocess(raw, "unicode_letters") == "café naïve 日本語 привет мир हिन्दी x"
    assert preprocess("The Time-Machine, 1895!", "unicode_letters") == \
        preprocess("The Time-Machine, 1895!", "letters")  # ASCII text: the book's result
    assert kept_share("Привет, мир", preprocess("Привет, мир", "letters")) == 0.0
    assert kept_share("abc, def", preprocess("abc, def", "letters")) == pytest.approx(6 / 7)


def test_vocab_order_unk_and_tie_break():
    vocab = Vocab(list("bbbaaacd"))
    assert vocab.idx_to_token == ["<unk>", "a", "b", "c", "d"]  # ties: by token
    assert vocab["zzz"] == vocab.unk == 0
    assert vocab.token_freqs[0] == ("a", 3)


def test_min_freq_maps_rare_tokens_to_unk():
    vocab = Vocab(list("aaabbc"), min_freq=2)
    assert "c" not in vocab.token_to_idx
    assert vocab["c"] == 0 and vocab["a"] == 1


def test_reserved_tokens_keep_their_order():
    vocab = Vocab(list("ab"), reserved_tokens=["<pad>", "<bos>", "<eos>"])
    assert vocab.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]


def test_round_trip_single_and_sequence():
    vocab = Vocab(tokenize("hello world", "char"))
    ids = vocab[list("world")]
    assert vocab.to_tokens(ids) == list("world")
    assert vocab.to_tokens(vocab["o"]) == "o"


def test_json_round_trip(tmp_path):
    vocab = Vocab(tokenize("the time machine by h g wells", "word"), min_freq=1,
                  reserved_tokens=["<pad>"])
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab
    assert json.loads((tmp_path / "v.json").read_text())["idx_to_token"][0] == "<unk>"


def test_encode_corpus_counts_only_the_training_fraction():
    text = "aaaa" + "bbbb" + "zz"  # 'z' only in the held-out last 20%
    ids, vocab = encode_corpus(text, "char", vocab_fraction=0.8)
    assert "z" not in vocab.token_to_idx
    assert ids[-2:].tolist() == [0, 0]
    assert vocab.to_tokens(ids[:8].tolist()) == list("aaaabbbb")
    assert ids.dtype == torch.uint8


def test_encode_words_and_unicode():
    ids, vocab = encode_corpus("der Käse der Bär", "word")
    assert vocab.to_tokens(ids.tolist()) == ["der", "Käse", "der", "Bär"]
    ids, vocab = encode_corpus("Käse", "char")
    assert vocab.to_tokens(ids.tolist()) == list("Käse")


def test_encode_respects_max_tokens_and_rejects_unknown_token():
    ids, _ = encode_corpus("abcdefgh", "char", max_tokens=5)
    assert len(ids) == 5
    with pytest.raises(ValueError, match="data.token='bpe'"):
        encode_corpus("abc", "bpe")


def test_index_dtype_is_the_smallest_that_fits():
    assert index_dtype(28) == torch.uint8
    assert index_dtype(300) == torch.int16
    assert index_dtype(70_000) == torch.int32


def test_letters_preprocessing_equals_the_books_regex_on_random_text():
    import random
    import re

    rng = random.Random(0)
    alphabet = "abcXYZ \n\t.,!-'é∑😀0123456789"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert preprocess(text, "letters") == re.sub("[^A-Za-z]+", " ", text).lower(), text
