"""Byte-level BPE trained on the train split with `tokenizers`, cached on disk.

The tokenizer is GPT-2 style: text is split into UTF-8 bytes, each byte drawn as one printable character
(`pre_tokenizers.ByteLevel`), and BPE merges are learned on top, up to `vocab_size` tokens. Decoding is
lossless, and every token stands for a fixed byte string, one byte per character of its vocabulary entry;
`token_byte_lengths` reads those lengths off the vocabulary, so the UTF-8 bytes behind any token sequence
(the denominator of bits per byte) is a table lookup.

`<|endoftext|>` is the first special token, so its id is 0 = `ModelConfig.eos_id`; it opens every document.

The cache file is `<cache_dir>/tokenizer-<key>.json`, where key hashes the train split's `datasets`
fingerprint (which identifies the source files or contents and `max_train_docs`), the vocabulary size and
TOKENIZER_SETTINGS; a second run with the same data and settings reads it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
TOKENIZER_SETTINGS = {"model": "bpe", "pre_tokenizer": "byte_level", "add_prefix_space": False,
                      "special_tokens": [EOS], "min_frequency": 2}
"""Everything that shapes the tokenizer besides the data and the vocabulary size: part of the cache key."""


def tokenizer_cache_path(train: Dataset, vocab_size: int, cache_dir: str | Path) -> Path:
    key = {"train": train._fingerprint, "vocab_size": vocab_size, **TOKENIZER_SETTINGS}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"tokenizer-{digest}.json"


def cached_tokenizer(train: Dataset, text_column: str, vocab_size: int, cache_dir: str | Path,
                     *, train_if_missing: bool = True) -> Tokenizer:
    """The tokenizer for this train split and vocabulary size: read from the cache, or trained and cached."""
    path = tokenizer_cache_path(train, vocab_size, cache_dir)
    if path.exists():
        tokenizer = Tokenizer.from_file(str(path))
    elif train_if_missing:
        tokenizer = train_tokenizer((b[text_column] for b in train.iter(batch_size=256)), vocab_size, len(train))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    else:
        raise FileNotFoundError(f"tokenizer cache {path} is missing: prepare_data() trains it on rank 0 first")
    return tokenizer


def train_tokenizer(batches, vocab_size: int, length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE with `vocab_size` tokens on an iterator of texts or lists of texts."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=TOKENIZER_SETTINGS["add_prefix_space"])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=TOKENIZER_SETTINGS["min_frequency"],
        special_tokens=TOKENIZER_SETTINGS["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(batches, trainer, length=length)
    return tokenizer


def check_eos(tokenizer: Tokenizer, eos_id: int) -> None:
    got = tokenizer.token_to_id(EOS)
    if got != eos_id:
        raise ValueError(f"model.eos_id={eos_id}: the tokenizer gives {EOS} the id {got}; set model.eos_id: {got}")


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """(V_tok,) int64: the UTF-8 bytes each token stands for (0 for special tokens such as <|endoftext|>)."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, i in vocab.items():
        lengths[i] = 0 if token in special else len(token)  # byte-level: one character per byte
    return lengths
