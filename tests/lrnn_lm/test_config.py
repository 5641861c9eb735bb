"""The typed config: every preset loads, bad values and unknown names fail naming the field, the command line."""

import dataclasses
import typing

import pytest
import yaml

from lrnn_lm.config import (CONFIG_DIR, Config, DataConfig, ModelConfig, OptimConfig, TrainerConfig, build_parser,
                            load_config, resolve_config_path)
from lrnn_lm.model import LinearRNNLM

PRESETS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_presets_exist():
    assert {"tiny.yaml", "small.yaml", "tinystories.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_builds(path):
    cfg = load_config(path)
    assert resolve_config_path(path.name) == path and resolve_config_path(path.stem) == path
    assert load_config(path.stem) == cfg
    # the GPU presets compile on CUDA (3.6x faster steps at 32 x 2048 tokens, README); the CPU preset never does
    assert cfg.trainer.compile == (False if path.stem == "tiny" else "auto")
    assert cfg.model.eos_id == 0
    if path.stem == "small":
        assert 8e6 <= LinearRNNLM(cfg.model).num_params() <= 12e6  # "about 10M", the tied embedding once


@pytest.mark.parametrize(
    ("overrides", "error", "names"),
    [
        (["--data.seq_len", "1"], ValueError, "data.seq_len"),
        (["--optim.lr", "-1"], ValueError, "optim.lr"),
        (["--trainer.logger", "tensorboard"], ValueError, "trainer.logger"),
        (["--trainer.max_steps", "many"], ValueError, "trainer.max_steps"),
        (["--data.batch_size", "2.5"], ValueError, "data.batch_size"),
        (["--data.no_such_field", "1"], ValueError, "no_such_field"),
        (["--nosuchsection.field", "1"], ValueError, "nosuchsection"),
        (["--model.vocab_size", "0"], ValueError, "model.vocab_size"),
        (["--trainer.strategy", "fsdp"], ValueError, "trainer.strategy"),
        (["--data.val_split", "train"], ValueError, "data.val_split"),
        (["--data.test_split", "validation"], ValueError, "data.test_split"),
        (["--optim.lr", ".inf"], ValueError, "optim.lr"),
        (["--model.scan", "cuda"], ValueError, "model.scan"),
        (["--trainer.compile", "maybe"], ValueError, "trainer.compile"),
        (["--optim.lr", "1e39"], ValueError, "optim.lr"),  # inf in the fused optimizer's float32
        (["--trainer.seed", str(2**32)], ValueError, "trainer.seed"),
    ],
)
def test_bad_values_name_the_field(overrides, error, names):
    with pytest.raises(error, match=names):
        load_config("tiny.yaml", overrides)


def test_overrides_parse_as_yaml_scalars():
    args = ["--model.d_model", "512", "--optim.lr", "1e-3", "--trainer.resume", "--data.max_train_docs", "null",
            "--data.source=corpus/*.txt", "--trainer.compile", "false", "--optim.betas", "[0.9, 0.99]"]
    cfg = load_config("tiny.yaml", args)
    assert (cfg.model.d_model, cfg.optim.lr, cfg.trainer.resume, cfg.trainer.compile) == (512, 1e-3, True, False)
    assert (cfg.data.max_train_docs, cfg.data.source, cfg.optim.betas) == (None, "corpus/*.txt", (0.9, 0.99))


def test_help_lists_every_field_with_its_docstring_and_default():
    text = " ".join(build_parser().format_help().split())
    for section, section_cls in typing.get_type_hints(Config).items():
        for f in dataclasses.fields(section_cls):
            assert f"--{section}.{f.name}" in text
        assert " ".join(section_cls.__doc__.split()).rstrip(".") in text, section  # the section's heading
    assert "Residual stream width. (type: int, default: 256)" in text
    assert "--print_config" in text


def test_print_config_writes_a_runnable_yaml(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config("small.yaml", ["--model.d_model", "512", "--print_config"])
    assert exit_.value.code == 0
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    assert load_config(tmp_path / "printed.yaml") == load_config("small.yaml", ["--model.d_model", "512"])


def test_string_fields_keep_the_text_given():
    """YAML would read these as numbers (012 as octal 10); where a field takes a string the text is kept, and
    where it takes a number too (devices, precision: int | str) the number."""
    args = ["--trainer.precision", "32", "--trainer.wandb_project", "2024", "--data.source", "012",
            "--trainer.devices", "2"]
    t = load_config("tiny.yaml", args)
    assert (t.trainer.precision, t.trainer.wandb_project, t.data.source, t.trainer.devices) == (32, "2024", "012", 2)


@pytest.mark.parametrize("make", [lambda: DataConfig(seq_len=2.5), lambda: DataConfig(batch_size=True),
                                  lambda: OptimConfig(warmup_steps=1.5), lambda: ModelConfig(n_layers=True),
                                  lambda: TrainerConfig(max_steps=True), lambda: ModelConfig(eos_id=False)],
                         ids=["seq_len", "batch_size", "warmup", "n_layers", "max_steps", "eos_id"])
def test_sections_built_directly_check_integer_types(make):
    """A bool is not an integer anywhere, whether the section comes from the command line or from Python."""
    with pytest.raises(ValueError, match=r"expected an integer"):
        make()


@pytest.mark.parametrize("make", [lambda: ModelConfig(dropout=True), lambda: OptimConfig(lr=float("nan")),
                                  lambda: ModelConfig(gate_lower_bound=1), lambda: TrainerConfig(resume=1)],
                         ids=["dropout", "lr", "gate_lower_bound", "resume"])
def test_sections_built_directly_check_numbers_and_bools(make):
    with pytest.raises(ValueError, match=r"expected (a finite number|true or false|true, false or 'auto')"):
        make()


def test_old_scan_names_are_accepted():
    assert load_config(None, ["--model.scan", "triton"]).model.scan == "triton"


def test_an_empty_section_in_a_file_takes_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\ntrainer:\n  precision: 32\n")
    cfg = load_config(tmp_path / "c.yaml", ["--optim.lr", "0.01"])
    assert (cfg.optim.lr, cfg.trainer.precision) == (0.01, 32)


def test_round_trip_through_plain_dicts():
    cfg = load_config("small.yaml")
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_yaml_is_loaded_safely(tmp_path):
    """jsonargparse reads presets with a SafeLoader: an object tag is an error, and its code never runs."""
    path, marker = tmp_path / "evil.yaml", tmp_path / "pwned"
    path.write_text(f"trainer: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="config"):
        load_config(path)
    assert not marker.exists()


def test_malformed_yaml_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: [1\n")
    with pytest.raises(ValueError) as error:
        load_config(path)
    assert "\n" not in str(error.value) and "bad.yaml" in str(error.value)
