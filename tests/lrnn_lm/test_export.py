"""A checkpoint as a Hugging Face-style folder and back: the same logits, the tokenizer files other tools read, and
evaluate / generate given the folder."""

import json

import pytest
import torch
from tokenizers import Tokenizer

from lrnn_lm.config import load_config
from lrnn_lm.evaluate import main as evaluate_main
from lrnn_lm.export import main as export_main
from lrnn_lm.generate import main as generate_main
from lrnn_lm.lit_module import load_checkpoint
from lrnn_lm.model import LinearRNNLM
from lrnn_lm.train import train

from .tiny_run import tiny_overrides


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus):
    """A 3-step run's last checkpoint, and the folder it exports to: (ckpt, folder)."""
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    train(load_config(None, tiny_overrides(run, corpus, trainer__max_steps=3, trainer__val_every=100,
                                           trainer__logger="none")))
    ckpt, out = str(run / "checkpoints" / "last.ckpt"), root / "exported"
    export_main(["--ckpt", ckpt, "--out", str(out)])
    return ckpt, out


def test_export_then_import_gives_the_checkpoints_logits(exported):
    ckpt, out = exported
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "run_config.json"} <= {p.name for p in out.iterdir()}

    module, tokenizer = load_checkpoint(ckpt)
    model = LinearRNNLM.from_pretrained(out)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens), module.model.eval()(tokens))  # float32 on the CPU: the same bits
    assert model.cfg == module.cfg.model
    assert Tokenizer.from_file(str(out / "tokenizer.json")).to_str() == tokenizer.to_str()
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    text = "ROMEO: But soft!"
    assert fast(text)["input_ids"] == tokenizer.encode(text).ids and fast.eos_token == "<|endoftext|>"


def test_evaluate_and_generate_take_an_exported_folder(exported, capsys):
    ckpt, out = exported[0], str(exported[1])
    capsys.readouterr()
    scores = []
    for source in (ckpt, out):
        evaluate_main(["--ckpt", source, "--split", "test"])
        printed = capsys.readouterr().out
        scores.append(json.loads(printed[printed.index("{"):])["bpb"])
    assert scores[0] == pytest.approx(scores[1], rel=1e-9)
    texts = []
    for source in (ckpt, out):
        generate_main(["--ckpt", source, "--prompt", "ROMEO:", "--prompt", "To be", "--max-new-tokens", "12",
                       "--seed", "0"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "--- 1\nTo be" in texts[0]


@pytest.mark.parametrize("damage", ["truncated weights", "truncated tokenizer", "truncated config", "other d_model",
                                    "unknown config field", "no tokenizer"])
def test_a_damaged_folder_is_one_error_naming_its_file(exported, tmp_path, damage):
    """evaluate and generate end in one line naming the file (cli.py), as for a damaged checkpoint."""
    import shutil

    from lrnn_lm.pretrained import load_for_inference

    folder = shutil.copytree(exported[1], tmp_path / "copy")
    name = {"truncated weights": "model.safetensors", "no tokenizer": "tokenizer.json"}.get(
        damage, "tokenizer.json" if "tokenizer" in damage else "config.json")
    file = folder / name
    if damage.startswith("truncated"):
        file.write_bytes(file.read_bytes()[:100])
    elif damage == "no tokenizer":
        file.unlink()
    else:
        config = json.loads(file.read_text())
        config.update({"d_model": config["d_model"] + 8} if damage == "other d_model" else {"new_field": 1})
        file.write_text(json.dumps(config))
    error = FileNotFoundError if damage == "no tokenizer" else ValueError
    named = "model.safetensors" if damage == "other d_model" else name  # the weights do not fit config.json
    with pytest.raises(error, match=f"^--ckpt {folder}: (no )?{named}"):
        load_for_inference(folder)


def test_from_pretrained_refuses_missing_weights_and_a_missing_config(exported, tmp_path):
    """LinearRNNLM.from_pretrained is strict: a weight missing from model.safetensors is an error, not a parameter
    left at its random initialisation; a folder without config.json says so."""
    import shutil

    import safetensors.torch

    folder = shutil.copytree(exported[1], tmp_path / "copy")
    weights = safetensors.torch.load_file(str(folder / "model.safetensors"))
    dropped = sorted(weights)[-1]
    safetensors.torch.save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError, match=dropped.replace(".", r"\.")):
        LinearRNNLM.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LinearRNNLM.from_pretrained(folder)


def test_evaluating_a_split_needs_the_folders_run_config(exported, tmp_path, capsys):
    """Without run_config.json the training data is unknown: --split is refused (one line, exit 2) rather than
    scoring the default dataset; --text-file still works."""
    import shutil

    folder = shutil.copytree(exported[1], tmp_path / "copy")
    (folder / "run_config.json").unlink()
    with pytest.raises(SystemExit) as stop:
        evaluate_main(["--ckpt", str(folder), "--split", "test"])
    assert stop.value.code == 2 and "error: --split: " in capsys.readouterr().err
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: But soft! What light through yonder window breaks?\n" * 4, encoding="utf-8")
    evaluate_main(["--ckpt", str(folder), "--text-file", str(text)])


def test_a_prompts_files_byte_order_mark_is_not_text(exported, tmp_path, capsys):
    """A prompts file saved with a UTF-8 byte-order mark (as some editors do) gives the same prompts as without."""
    texts = []
    for bom in (b"", b"\xef\xbb\xbf"):
        prompts = tmp_path / f"prompts{len(bom)}.txt"
        prompts.write_bytes(bom + "ROMEO:\nTo be\n".encode())
        generate_main(["--ckpt", str(exported[1]), "--prompts-file", str(prompts), "--max-new-tokens", "5",
                       "--temperature", "0"])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "\ufeff" not in texts[1]
