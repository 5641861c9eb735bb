"""Models that leave the project: a checkpoint as a Hugging Face-style folder, and back.

    python -m lrnn_lm.export --ckpt runs/small/checkpoints/best.ckpt --out small-lrnn

writes, in the folder:
- config.json and model.safetensors: the model (`LinearRNNLM.save_pretrained`, huggingface_hub's
  PyTorchModelHubMixin), loaded by `LinearRNNLM.from_pretrained(folder)`, or pushed with `push_to_hub`;
- tokenizer.json, tokenizer_config.json and special_tokens_map.json: the BPE, as
  `transformers.PreTrainedTokenizerFast.from_pretrained(folder)` and `tokenizers.Tokenizer.from_file` read it;
- run_config.json: the whole training config (data, optimizer, trainer), so that `python -m lrnn_lm.evaluate`
  can score the model on its splits and `python -m lrnn_lm.generate` can sample from it, given the folder
  wherever they take a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import safetensors.torch
from tokenizers import Tokenizer

from .config import Config, ModelConfig
from .lit_module import LitLM, load_checkpoint
from .tokenizer import EOS

RUN_CONFIG = "run_config.json"


def export(ckpt: str, out: str | Path) -> Path:
    """Write the folder described above from a train.py checkpoint; -> its path."""
    module, tokenizer = load_checkpoint(ckpt)
    out = Path(out)
    module.model.save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": None, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in special.items() if v}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": False, "clean_up_tokenization_spaces":
        False, "model_max_length": module.cfg.data.seq_len}, indent=2) + "\n")
    (out / RUN_CONFIG).write_text(json.dumps(module.cfg.to_dict(), indent=2) + "\n")
    return out


def load_for_inference(path: str | Path) -> tuple[LitLM, Tokenizer]:
    """A train.py checkpoint or an exported folder -> (the LightningModule with its weights, on the CPU; the
    tokenizer)."""
    path = Path(path)
    if not path.is_dir():
        return load_checkpoint(str(path))
    # what LinearRNNLM.from_pretrained does for a local folder, without its print, into the module's own model
    with _reading(path / "config.json"):
        model_cfg = ModelConfig(**json.loads((path / "config.json").read_text()))
    run_config = path / RUN_CONFIG
    with _reading(run_config):
        config = json.loads(run_config.read_text()) if run_config.is_file() else {}
        config["model"] = Config(model=model_cfg).to_dict()["model"]  # config.json's, should the two differ
        module = LitLM(config)
    with _reading(path / "model.safetensors"):
        safetensors.torch.load_model(module.model, str(path / "model.safetensors"), strict=True)
    with _reading(path / "tokenizer.json"):
        return module, Tokenizer.from_file(str(path / "tokenizer.json"))


@contextlib.contextmanager
def _reading(file: Path):
    """Any failure to read `file` of an exported folder (missing, truncated, from another version or model) as one
    ValueError that names it."""
    if not file.is_file() and file.name != RUN_CONFIG:  # run_config.json is optional
        raise FileNotFoundError(f"--ckpt {file.parent}: no {file.name} in the folder; export it again")
    try:
        yield
    except Exception as e:  # json, safetensors, tokenizers and the config checks each raise their own types
        raise ValueError(f"--ckpt {file.parent}: {file.name} could not be loaded ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); export the folder again") from e
