"""Text sets: the offline Wikipedia split, local files, the Hub's offline errors, seeded windows."""

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from zoo.calibration.text import CALIBRATION_SETS, calibration_batches, dataset_fingerprint, evaluation_text, load_texts
from zoo.errors import ZooError

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "in london and paris during cold winter evenings with hot tea"
).split()


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `texts`, so every window holds distinct real tokens."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=10**7, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture
def docs():
    g = torch.Generator().manual_seed(1)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (60,), generator=g).tolist()) for _ in range(30)]


@pytest.fixture
def jsonl(tmp_path, docs):
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in [docs[0], "", *docs[1:]]))
    return path


@pytest.fixture(scope="module")
def wiki():
    return load_texts("wiki-offline", "train"), load_texts("wiki-offline", "test")


def test_wiki_offline_splits_are_disjoint_plain_english(wiki):
    train, test = wiki
    assert len(train) >= 70 and len(test) >= 20
    assert not set(train) & set(test)
    train_paragraphs = {p for doc in train for p in doc.split("\n") if len(p) > 200}
    assert not any(p in train_paragraphs for doc in test for p in doc.split("\n"))
    joined = "\n".join(train + test)
    assert len(joined.split()) > 400_000
    for markup in ("[[", "]]", "{{", "}}", "<ref", "thumb|", "Category:", "'''"):
        assert markup not in joined, markup
    assert "Achilles was the son of the Nereid Thetis and Peleus, the king of the Myrmidons." in joined
    assert evaluation_text("wiki-offline") == "\n\n".join(test)


def test_wiki_offline_windows_are_seeded_and_come_from_train_only(wiki):
    train, test = wiki
    tokenizer = word_tokenizer(train + test)
    a = calibration_batches(tokenizer, "wiki-offline", n_samples=16, seq_len=64, seed=0)
    assert a.shape == (16, 64) and a.dtype == torch.int64
    assert torch.equal(a, calibration_batches(tokenizer, "wiki-offline", 16, 64, seed=0))
    b = calibration_batches(tokenizer, "wiki-offline", 16, 64, seed=1)
    assert not torch.equal(a, b)
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    train_text, test_text = (" ".join(" ".join(docs).split()) for docs in (train, test))
    for row in a[:4]:
        window = tokenizer.decode(row.tolist())
        assert "<unk>" not in window and window in train_text and window not in test_text


def test_local_jsonl_windows_are_slices_of_the_joined_text(jsonl, docs):
    assert load_texts(str(jsonl), "train") == docs  # empty documents dropped, order kept
    assert load_texts(str(jsonl), "test") == docs  # one file serves every split
    tokenizer = word_tokenizer(docs)
    ids = tokenizer("\n\n".join(docs)).input_ids
    batch = calibration_batches(tokenizer, str(jsonl), n_samples=8, seq_len=32, seed=3)
    for row in batch.tolist():
        assert any(ids[s : s + 32] == row for s in range(len(ids) - 31))
    assert torch.equal(batch, calibration_batches(tokenizer, str(jsonl), 8, 32, seed=3))
    assert not torch.equal(batch, calibration_batches(tokenizer, str(jsonl), 8, 32, seed=4))


def test_too_few_tokens_names_the_set_and_counts(jsonl, docs):
    tokenizer = word_tokenizer(docs)
    total = len(tokenizer("\n\n".join(docs)).input_ids)
    with pytest.raises(ZooError, match=rf"'{jsonl}' has {total} tokens, fewer than the 100 x 64 = 6400 requested"):
        calibration_batches(tokenizer, str(jsonl), n_samples=100, seq_len=64)


def test_local_folders_saved_datasets_and_other_formats(tmp_path, docs):
    folder = tmp_path / "split-files"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs[:20]))
    (folder / "test.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs[20:]))
    assert load_texts(str(folder), "train") == docs[:20] and load_texts(str(folder), "test") == docs[20:]

    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": docs[:5]}),
            "validation": datasets.Dataset.from_dict({"text": docs[5:7]}),
        }
    ).save_to_disk(str(saved))
    assert load_texts(str(saved), "train") == docs[:5]
    assert load_texts(str(saved), "test") == docs[5:7]  # validation stands in for a missing test split

    txt = tmp_path / "plain.txt"
    txt.write_text("first line\n\nsecond line\n")
    assert load_texts(str(txt), "train") == ["first line", "second line"]

    no_text = tmp_path / "rows.jsonl"
    no_text.write_text(json.dumps({"body": "x", "id": 1}))
    with pytest.raises(ZooError, match="no 'text' or 'content' column; columns: body, id"):
        load_texts(str(no_text), "train")
    with pytest.raises(ZooError, match="unsupported file type '.xml'"):
        (tmp_path / "a.xml").write_text("<a/>")
        load_texts(str(tmp_path / "a.xml"), "train")


def test_hub_sets_fail_offline_with_the_way_out(monkeypatch):
    with pytest.raises(ZooError, match="wikitext2 .*unreachable.*'wiki-offline'.*local path"):
        load_texts("wikitext2", "test", online=False)

    def no_connection(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", no_connection)
    with pytest.raises(ZooError, match="cannot load c4 \\(allenai/c4\\).*Couldn't reach.*'wiki-offline'"):
        load_texts("c4", "test")


def test_hub_loading_uses_each_protocols_source(monkeypatch):
    seen = []

    def fake_load(path, name=None, **kwargs):
        seen.append((path, name, kwargs))
        rows = [{"content": f"doc {i}", "text": f"doc {i}"} for i in range(3)]
        return (
            datasets.IterableDataset.from_generator(lambda: iter(rows))
            if kwargs.get("streaming")
            else datasets.Dataset.from_list(rows)
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_texts("refinedweb", "train") == ["doc 0", "doc 1", "doc 2"]
    load_texts("wikitext2", "test")
    load_texts("c4", "test")
    assert seen[0][:2] == ("tiiuae/falcon-refinedweb", None) and seen[0][2]["streaming"]
    assert seen[1] == ("Salesforce/wikitext", "wikitext-2-raw-v1", {"split": "test", "streaming": False})
    assert seen[2][2]["data_files"] == {"test": "en/c4-validation.00000-of-00008.json.gz"}
    with pytest.raises(ZooError, match="refinedweb has no 'test' split"):
        load_texts("refinedweb", "test")


def test_defaults_and_unknown_names(tmp_path):
    assert CALIBRATION_SETS["refinedweb"].text_field == "content"
    with pytest.raises(ZooError, match="unknown text set 'wikitext'.*refinedweb, wikitext2, c4, wiki-offline"):
        load_texts("wikitext", "train")
    with pytest.raises(ZooError, match="split must be one of train, test"):
        load_texts("wiki-offline", "validation")


def test_fingerprint_covers_values_and_shape():
    ids = torch.arange(12).reshape(3, 4)
    assert dataset_fingerprint(ids) == dataset_fingerprint(ids.clone().to(torch.int32))
    assert dataset_fingerprint(ids) != dataset_fingerprint(ids.reshape(4, 3))
    assert dataset_fingerprint(ids) != dataset_fingerprint(ids + 1)
    assert dataset_fingerprint(ids).startswith("sha256:") and len(dataset_fingerprint(ids)) == 7 + 16
