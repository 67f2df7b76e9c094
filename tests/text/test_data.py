import pytest
import torch

from rnnlab.errors import CorpusError
from rnnlab.text import corpus as corpus_mod
from rnnlab.text.corpus import download, resolve_corpus
from rnnlab.text.datamodule import PlanSampler, TextDataModule, WindowDataset, plan_epoch


def batches(num_tokens, sampling, windows="regular", seed=0, epoch=0, bs=3, steps=5):
    corpus = torch.arange(num_tokens)
    sampler = PlanSampler(num_tokens, bs, steps, sampling, windows, seed)
    sampler.set_epoch(epoch)
    ds = WindowDataset(corpus)
    return [ds[w] for w in sampler]


@pytest.mark.parametrize("sampling", ["random", "sequential"])
@pytest.mark.parametrize("windows", ["regular", "randomized"])
def test_y_is_x_shifted_by_one(sampling, windows):
    for X, Y in batches(200, sampling, windows):
        assert X.shape == Y.shape and X.shape[0] == 3
        assert torch.equal(Y, X + 1)  # the corpus is arange, so shifted = +1


def test_random_windows_do_not_overlap_and_cover_the_text():
    bs, steps, n = 3, 5, 200
    got = batches(n, "random", bs=bs, steps=steps)
    starts = torch.cat([X[:, 0] for X, _ in got]).sort().values
    assert all(X.shape[1] == steps for X, _ in got)
    assert torch.all(starts.diff() == steps)  # back to back: no overlap, no gap
    offset = int(starts[0])
    assert 0 <= offset < steps
    assert len(got) == (n - 1 - (steps - 1)) // (bs * steps)


def test_random_minibatches_are_not_adjacent_in_the_text():
    got = batches(2000, "random", bs=4, steps=5)
    adjacent = sum(torch.equal(a[0][:, -1] + 1, b[0][:, 0]) for a, b in zip(got, got[1:]))
    assert adjacent < len(got) // 2


@pytest.mark.parametrize("windows", ["regular", "randomized"])
def test_sequential_rows_continue_across_minibatches(windows):
    got = batches(300, "sequential", windows)
    for (X0, _), (X1, _) in zip(got, got[1:]):
        assert torch.equal(X0[:, -1] + 1, X1[:, 0])


def test_randomized_windows_vary_with_mean_num_steps():
    got = batches(3000, "sequential", "randomized", steps=10)
    lengths = [X.shape[1] for X, _ in got]
    assert len(set(lengths)) > 3 and min(lengths) >= 5 and max(lengths) <= 15
    assert sum(lengths) == 10 * len(lengths)


def test_full_windows_are_whole_streams():
    plan = plan_epoch(101, 4, 5, "sequential", "full", torch.Generator().manual_seed(0))
    assert len(plan) == 1 and plan[0].length == (100 - int(plan[0].starts[0])) // 4


def test_epochs_reshuffle_and_the_seed_reproduces():
    first = [X for X, _ in batches(500, "random", epoch=0)]
    again = [X for X, _ in batches(500, "random", epoch=0)]
    other_epoch = [X for X, _ in batches(500, "random", epoch=1)]
    other_seed = [X for X, _ in batches(500, "random", seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), torch.cat(other_epoch))
    assert not torch.equal(torch.cat(first), torch.cat(other_seed))
    offsets = {int(batches(500, "sequential", epoch=e)[0][0][0, 0]) for e in range(8)}
    assert len(offsets) > 1  # each epoch starts at a random offset


def test_number_of_batches_is_the_same_every_epoch():
    s = PlanSampler(997, 3, 7, "random", "randomized", seed=0)
    counts = set()
    for e in range(10):
        s.set_epoch(e)
        counts.add(len(list(s)))
    assert counts == {len(s)}


def test_datamodule_splits_are_contiguous_and_eval_is_deterministic(corpus_file):
    dm = TextDataModule(path=str(corpus_file), batch_size=2, num_steps=5)
    dm.setup()
    n = sum(len(t) for t in dm.corpus.values())
    assert len(dm.corpus["train"]) == int(n * 0.9)
    val1 = [X for X, _ in dm.val_dataloader()]
    val2 = [X for X, _ in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(val1, val2))
    covered = sum(X.numel() for X in val1)
    assert covered >= len(dm.corpus["val"]) - 1 - 2  # all but the tail that is not a full row
    train_text = dm.vocab.to_tokens(dm.corpus["train"].tolist())
    assert set(dm.vocab.idx_to_token[1:]) == set(train_text)


def test_batches_are_pinned_only_for_a_gpu_trainer(corpus_file):
    from types import SimpleNamespace
    dm = TextDataModule(path=str(corpus_file), batch_size=2, num_steps=5)
    dm.setup()
    assert not dm.train_dataloader().pin_memory  # no trainer: nothing to copy to
    for device, pinned in (("cpu", False), ("cuda", True)):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert [dm._loader(s).pin_memory for s in ("train", "val")] == [pinned, pinned]
    dm.pin_memory = False  # data.pin_memory=false overrides the choice
    assert not dm.train_dataloader().pin_memory


def test_time_machine_vocabulary_has_28_entries(tmp_path):
    text = "".join(chr(c) for c in range(ord("a"), ord("z") + 1)) + " THE END, 1895.\n"
    path = tmp_path / "letters.txt"
    path.write_text(text * 50)
    dm = TextDataModule(path=str(path), batch_size=2, num_steps=5)
    dm.setup()
    assert len(dm.vocab) == 28 and dm.vocab.idx_to_token[0] == "<unk>"


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "bin.txt").write_bytes(b"abc\xff\xfe\x00") and p / "bin.txt", "not UTF-8"),
    (lambda p: (p / "empty.txt").write_text("  \n") and p / "empty.txt", "is empty"),
    (lambda p: (p / "short.txt").write_text("abc def") and p / "short.txt",
     "fewer than one minibatch"),
])
def test_bad_corpus_files_give_clear_errors(tmp_path, make, match):
    path = make(tmp_path)
    dm = TextDataModule(path=str(path), batch_size=4, num_steps=8)
    with pytest.raises(ValueError, match=match) as info:
        dm.setup()
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key, value", [("sampling", "shuffled"), ("token", "bpe"),
                                        ("preprocess", "lower"), ("batch_size", 0),
                                        ("num_steps", -3), ("pin_memory", "yes")])
def test_bad_settings_name_the_key_and_value(key, value):
    with pytest.raises(ValueError, match=f"data.{key}"):
        TextDataModule(**{key: value})


def test_download_verifies_and_caches(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_text("hello world\n")
    sha1 = corpus_mod.sha1_of(src)
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        dest.write_bytes(src.read_bytes())

    monkeypatch.setattr(corpus_mod, "_fetch", fake_fetch)
    dest = tmp_path / "cache" / "t.txt"
    assert download("http://x/t.txt", dest, sha1).read_text() == "hello world\n"
    download("http://x/t.txt", dest, sha1)
    assert calls == ["http://x/t.txt"]  # the verified cached file is never downloaded again


def test_checksum_mismatch_deletes_the_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "_fetch", lambda url, dest: dest.write_text("tampered"))
    dest = tmp_path / "t.txt"
    with pytest.raises(CorpusError, match="expected 0000.*partial file was deleted"):
        download("http://x/t.txt", dest, "0" * 40)
    left = [p.name for p in tmp_path.iterdir()]
    assert left == [".t.txt.lock"]  # neither the final name nor a temp file remains


def test_no_network_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(url, dest):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(corpus_mod, "_fetch", offline)
    with pytest.raises(CorpusError) as info:
        resolve_corpus(None, tmp_path / "data")
    msg = str(info.value)
    assert corpus_mod.TIME_MACHINE_URL in msg and str(tmp_path / "data" / "timemachine.txt") in msg
    assert not (tmp_path / "data" / "timemachine.txt").exists()


def test_a_corpus_that_preprocessing_removes_names_the_setting_that_keeps_it(tmp_path, caplog):
    russian = tmp_path / "ru.txt"
    russian.write_text("Машина времени и путешественник во времени. " * 60)
    dm = TextDataModule(path=str(russian), batch_size=2, num_steps=5)
    with pytest.raises(ValueError) as info:
        dm.setup()  # `letters` (the book's) keeps a-z only: nothing of this text is left
    message = str(info.value)
    assert "has 0 tokens" in message and "data.preprocess=letters kept 0%" in message
    assert "data.preprocess=unicode_letters" in message and "lower data.batch_size" not in message
    assert any("data.preprocess=unicode_letters" in r.message for r in caplog.records
               if r.levelname == "WARNING")
    dm = TextDataModule(path=str(russian), preprocess="unicode_letters", batch_size=2,
                        num_steps=5)
    dm.setup()
    assert "ш" in dm.vocab.token_to_idx and len(dm.corpus["train"]) > 1000
    data = dm.describe()
    assert data["tokens"] == {k: len(v) for k, v in dm.corpus.items()}
    assert data["vocab_size"] == len(dm.vocab) and data["oov_rate"]["train"] == 0.0


def test_the_out_of_vocabulary_rate_counts_held_out_words_unseen_in_training(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("a b c d " * 90 + "zz yy a b " * 5 + "a b c d " * 5)
    dm = TextDataModule(path=str(path), token="word", batch_size=2, num_steps=3,
                        splits=(0.9, 0.05, 0.05))
    dm.setup()
    data = dm.describe()
    val = dm.corpus["val"]
    assert data["oov_rate"]["val"] == pytest.approx(float((val == 0).sum()) / len(val))
    assert data["oov_rate"]["val"] == pytest.approx(0.5)  # zz, yy: unseen in training
