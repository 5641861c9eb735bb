"""LightningDataModule: text splits -> cached BPE -> cached token ids -> windows of seq_len + 1 tokens.

Packing. A split's documents, each opened by <|endoftext|> (id `eos_id`), are concatenated into one token
stream s of N tokens. Window i is s[i·T : i·T + T + 1] with T = seq_len; its inputs are window[:-1] and its
targets window[1:]. Consecutive windows overlap by one token, so every token after the first is a target
exactly once, and the model's state starts from zero at each window (and is reset at every EOS).
- train: the full windows, N-1 // T of them (the shorter tail is dropped), in a shuffled order drawn from
  (seed, epoch) and sharded over ranks (see resumable_loader.py, which also keeps the data position).
- validation / test: every window in order, the tail included; a batch pads the tail with
  IGNORE_INDEX targets. This is the evaluation protocol of evaluate.py.

Every batch also carries n_bytes, the UTF-8 bytes its targets stand for (see tokenizer.token_byte_lengths),
so bits per byte = NLL / (ln 2 · bytes) is exact for any batch, any subset of batches and the whole split.

Caching and ranks. `prepare_data` (Lightning runs it once per node, on local rank 0) checks the corpus,
trains or reads the tokenizer and tokenizes each split with `datasets.map` into
`<cache_dir>/tokens-<split>-<key>.arrow`. `setup` (every rank) reads both caches and fails if they are
missing rather than tokenizing on every rank.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, Sequence, Value
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, DistributedSampler

from .config import DataConfig
from .corpus import SPLITS, load_corpus
from .resumable_loader import ResumableDataLoader, ShardedShuffleSampler
from .tokenizer import cached_tokenizer, check_eos, token_byte_lengths

IGNORE_INDEX = -100
"""Target id of padding positions: skipped by the loss (F.cross_entropy's default ignore_index)."""
SMALL_TOKENIZER = 0.75
"""A trained tokenizer under this fraction of model.vocab_size is warned about."""


class TokenWindows(torch.utils.data.Dataset):
    """Windows of seq_len + 1 tokens cut from one token stream at stride seq_len (see the module docstring).

    keep_tail: keep the last, shorter window (evaluation) or drop it (training: fixed-length blocks).
    pad_to_multiple: append one-token windows (nothing to predict) until the count is a multiple of it, so
        each of that many ranks evaluates the same number of batches and no window is counted twice.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, *, keep_tail: bool = False, pad_to_multiple: int = 1):
        self.stream, self.seq_len = stream, seq_len
        n_targets = max(len(stream) - 1, 0)
        self.n_windows = n_targets // seq_len + int(keep_tail and n_targets % seq_len > 0)
        self.length = -(-self.n_windows // pad_to_multiple) * pad_to_multiple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> np.ndarray:
        """-> (n + 1,) token ids: n = seq_len, fewer for the tail, 0 for padding."""
        if not 0 <= i < self.length:
            raise IndexError(i)
        if i >= self.n_windows:
            return self.stream[:1]
        return self.stream[i * self.seq_len : (i + 1) * self.seq_len + 1]


@dataclass
class WindowCollator:
    """A list of B windows (n_i + 1,) -> {"inputs": (B, T), "targets": (B, T), "n_bytes": ()}, all int64.

    T = max(n_i, 1), or pad_to = (rows, T) fixed: shorter windows, and rows past the windows given, are padded with
    eos_id inputs and IGNORE_INDEX targets (nothing to predict). Evaluation pads every batch to one shape, so a
    compiled model sees the same shape in every batch, the last one included, and compiles once.
    n_bytes is the UTF-8 bytes that the non-padding targets stand for.
    """

    eos_id: int
    token_bytes: np.ndarray
    """(V_tok,) bytes per token id, from tokenizer.token_byte_lengths."""
    pad_to: tuple[int, int] | None = None

    def __call__(self, windows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        lengths = {len(w) for w in windows}
        rows, T = self.pad_to or (len(windows), max(1, max(lengths) - 1))
        inputs = np.full((max(rows, len(windows)), T), self.eos_id, dtype=np.int64)
        targets = np.full((max(rows, len(windows)), T), IGNORE_INDEX, dtype=np.int64)
        for row, w in enumerate(windows):
            inputs[row, : len(w) - 1] = w[:-1]
            targets[row, : len(w) - 1] = w[1:]
        n_bytes = self.token_bytes[targets[targets != IGNORE_INDEX]].sum()
        return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets),
                "n_bytes": torch.tensor(n_bytes, dtype=torch.int64)}


def encode_documents(texts: list[str], tokenizer: Tokenizer, eos_id: int) -> list[list[int]]:
    """Token ids of each document, opened by EOS: [eos_id, *ids(text)]. A literal "<|endoftext|>" inside a text
    is encoded as the text it is (encode_special_tokens), so only the separator we insert resets the state."""
    tokenizer.encode_special_tokens = True
    return [[eos_id, *enc.ids] for enc in tokenizer.encode_batch_fast(texts)]


def _encode_batch(batch: dict[str, list], *, text_column: str, tokenizer: Tokenizer, eos_id: int) -> dict[str, list]:
    texts = batch[text_column]
    return {"ids": encode_documents(texts, tokenizer, eos_id), "n_bytes": [len(t.encode("utf-8")) for t in texts]}


class LMDataModule(L.LightningDataModule):
    """Train / validation / test token windows for a `DataConfig` (see the module docstring).

    tokenizer: use this one instead of the cached/trained one (evaluate.py passes the checkpoint's).
    After setup(): `tokenizer`, `streams[split]` (N,) int32 token ids, and `stats[split]` with the split's
    documents, tokens and UTF-8 bytes.
    """

    def __init__(self, data: DataConfig, vocab_size: int, eos_id: int = 0, seed: int = 0,
                 tokenizer: Tokenizer | None = None):
        super().__init__()
        self.data, self.vocab_size, self.eos_id, self.seed = data, vocab_size, eos_id, seed
        self.tokenizer = tokenizer
        self.streams: dict[str, np.ndarray] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.preparation_s = 0.0  # seconds spent in prepare_data and setup: the tokenizer, the token caches

    def prepare_data(self) -> None:
        if self.streams:
            return  # loaded by this process's setup already: Lightning calls this again at each validate and test
        started = time.perf_counter()
        self._tokenize(build=True)
        self.preparation_s += time.perf_counter() - started

    def setup(self, stage: str | None = None) -> None:
        if not self.streams:
            started = time.perf_counter()
            self.tokenizer, self.streams, self.stats = self._tokenize(build=False)
            self.collate = WindowCollator(self.eos_id, token_byte_lengths(self.tokenizer))
            self.preparation_s += time.perf_counter() - started

    def _tokenize(self, build: bool) -> tuple[Tokenizer, dict[str, np.ndarray], dict[str, dict[str, int]]]:
        corpus = load_corpus(self.data)  # checks the source, column and splits before anything heavy
        tokenizer = self.tokenizer or cached_tokenizer(corpus["train"], self.data.text_column, self.vocab_size,
                                                       self.data.cache_dir, train_if_missing=build)
        check_eos(tokenizer, self.eos_id)
        n_tokens = tokenizer.get_vocab_size()
        if n_tokens > self.vocab_size:
            raise ValueError(f"model.vocab_size={self.vocab_size}: smaller than the tokenizer's {n_tokens} tokens; "
                             f"set model.vocab_size to at least {n_tokens}")
        if build and n_tokens < SMALL_TOKENIZER * self.vocab_size:
            warnings.warn(f"model.vocab_size={self.vocab_size}, but the BPE trained on this train split has only "
                          f"{n_tokens} tokens (the text allows no more merges); {self.vocab_size - n_tokens} rows of "
                          f"the embedding will never be used; consider model.vocab_size={n_tokens}", stacklevel=2)
        encode = partial(_encode_batch, text_column=self.data.text_column, tokenizer=tokenizer, eos_id=self.eos_id)
        streams, stats = {}, {}
        for split in SPLITS:
            docs = corpus[split]
            path = self._token_cache_path(split, docs, tokenizer)
            if not build and not path.exists():
                raise FileNotFoundError(f"token cache {path} is missing: prepare_data() writes it on rank 0 first")
            tokens = docs.map(encode, batched=True, remove_columns=docs.column_names, cache_file_name=str(path),
                              load_from_cache_file=True, new_fingerprint=path.stem, desc=f"tokenize {split}",
                              features=Features({"ids": Sequence(Value("int32")), "n_bytes": Value("int64")}))
            streams[split] = pc.list_flatten(tokens.data.column("ids")).to_numpy()
            stats[split] = {"documents": len(tokens), "tokens": len(streams[split]),
                            "bytes": int(pc.sum(tokens.data.column("n_bytes")).as_py())}
        return tokenizer, streams, stats

    def _token_cache_path(self, split: str, docs: Dataset, tokenizer: Tokenizer) -> Path:
        key = hashlib.sha256(f"{docs._fingerprint}|{self.eos_id}|{tokenizer.to_str()}".encode()).hexdigest()[:16]
        return Path(self.data.cache_dir) / f"tokens-{split}-{key}.arrow"

    def _world(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def train_dataloader(self) -> ResumableDataLoader:
        """Each epoch is a whole number of optimizer steps per device: under gradient accumulation Lightning would
        otherwise end an epoch with a step of fewer micro-batches, still divided by accumulate_grad_batches."""
        world_size, rank = self._world()
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        windows = TokenWindows(self.streams["train"], self.data.seq_len)
        if len(windows) < self.data.batch_size * accumulate * world_size:
            raise ValueError(
                f"data: the train split has {len(windows)} windows of seq_len+1={self.data.seq_len + 1} tokens, fewer "
                f"than one optimizer step per device (batch_size {self.data.batch_size} x accumulate_grad_batches "
                f"{accumulate} x {world_size} devices); lower data.seq_len or data.batch_size, or use more data")
        sampler = ShardedShuffleSampler(windows, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed,
                                        drop_last=True, multiple=self.data.batch_size * accumulate)
        return ResumableDataLoader(windows, batch_size=self.data.batch_size, sampler=sampler, drop_last=True,
                                   **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """All windows of `split` in order, the tail included, sharded over ranks without repeats."""
        world_size, rank = self._world()
        windows = TokenWindows(self.streams[split], self.data.seq_len, keep_tail=True, pad_to_multiple=world_size)
        sampler = DistributedSampler(windows, num_replicas=world_size, rank=rank, shuffle=False)
        batch_size = batch_size or self.data.batch_size
        options = self._loader_options()
        options["collate_fn"] = WindowCollator(self.eos_id, self.collate.token_bytes, (batch_size, self.data.seq_len))
        return DataLoader(windows, batch_size=batch_size, sampler=sampler, **options)

    def _loader_options(self) -> dict:
        """A loader's own generator: without one, each new iterator draws its workers' base seed from torch's
        global state, which a resumed run would then draw at another step than an uninterrupted one (the
        dropout masks after it would differ, see callbacks.RNGState)."""
        workers = self.data.num_workers
        return {"collate_fn": self.collate, "num_workers": workers, "persistent_workers": workers > 0,
                "pin_memory": torch.cuda.is_available(), "generator": torch.Generator().manual_seed(self.seed)}

    def state_dict(self) -> dict[str, str]:
        """Saved in every checkpoint: the tokenizer, so generation and evaluation need no dataset or cache; and a
        fingerprint of the train split's tokens, which a resumed run's data position indexes into."""
        return {"tokenizer": self.tokenizer.to_str(), "train_fingerprint": self.train_fingerprint()}

    def load_state_dict(self, state: dict[str, str]) -> None:
        if state["tokenizer"] != self.tokenizer.to_str():
            raise ValueError("resume: the cached tokenizer differs from the checkpoint's; the data or the tokenizer "
                             "settings changed since the checkpoint was written")
        saved = state.get("train_fingerprint")  # absent from checkpoints written before it was saved
        # only where training resumes: validate and test load a checkpoint too, on any data
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and saved is not None and saved != self.train_fingerprint():
            raise ValueError(f"resume: the train split's tokens differ from the checkpoint's ({saved}, now "
                             f"{self.train_fingerprint()}): its data position would point into other text; the "
                             "data changed since the checkpoint was written (restore it, or start a new run_dir)")

    def train_fingerprint(self) -> str:
        """The train split's token count and a hash of at most 2^20 of its tokens, evenly spaced: any change of
        length, and in practice any reordering, changes it, at a cost that does not grow with the corpus."""
        stream = self.streams["train"]
        if getattr(self, "_fingerprinted", None) is not stream:
            sample = np.ascontiguousarray(stream[:: max(1, len(stream) >> 20)])
            self._fingerprint = f"{len(stream)}:{hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest()}"
            self._fingerprinted = stream
        return self._fingerprint
