"""The typed config: every preset loads, bad values and unknown names fail naming the field, CLI overrides."""

import pytest
import yaml

from lrnn_lm.config import CONFIG_DIR, Config, DataConfig, OptimConfig, load_config, parse_overrides, resolve_config_path
from lrnn_lm.model import LinearRNNLM

PRESETS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_presets_exist():
    assert {"tiny.yaml", "small.yaml", "tinystories.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_builds(path):
    cfg = load_config(path)
    assert resolve_config_path(path.name) == path and resolve_config_path(path.stem) == path
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
        (["--trainer.max_steps", "many"], TypeError, "trainer.max_steps"),
        (["--data.batch_size", "2.5"], TypeError, "data.batch_size"),
        (["--data.no_such_field", "1"], ValueError, "no_such_field"),
        (["--nosuchsection.field", "1"], ValueError, "nosuchsection"),
        (["--model.vocab_size", "0"], ValueError, "model.vocab_size"),
        (["--trainer.strategy", "fsdp"], ValueError, "trainer.strategy"),
        (["--data.val_split", "train"], ValueError, "data.val_split"),
        (["--data.test_split", "validation"], ValueError, "data.test_split"),
    ],
)
def test_bad_values_name_the_field(overrides, error, names):
    with pytest.raises(error, match=names):
        load_config("tiny.yaml", overrides)


def test_overrides_parse_as_yaml_scalars():
    args = ["--model.d_model", "512", "--optim.lr", "1e-3", "--trainer.resume", "--data.max_train_docs", "null",
            "data.source=corpus/*.txt", "--trainer.compile", "false"]
    assert parse_overrides(args) == {
        "model": {"d_model": 512},
        "optim": {"lr": 1e-3},
        "trainer": {"resume": True, "compile": False},
        "data": {"max_train_docs": None, "source": "corpus/*.txt"},
    }
    cfg = load_config("tiny.yaml", args)
    assert (cfg.model.d_model, cfg.optim.lr, cfg.trainer.resume) == (512, 1e-3, True)


def test_string_fields_keep_the_text_given():
    """YAML would read these as numbers (012 as octal 10); where a field takes a string the text is kept, and
    where it takes a number too (devices, precision: int | str) the number."""
    args = ["--trainer.precision", "32", "--trainer.wandb_project", "2024", "--data.source", "012",
            "--trainer.devices", "2"]
    t = load_config("tiny.yaml", args)
    assert (t.trainer.precision, t.trainer.wandb_project, t.data.source, t.trainer.devices) == (32, "2024", "012", 2)


@pytest.mark.parametrize("make", [lambda: DataConfig(seq_len=2.5), lambda: DataConfig(batch_size=True),
                                  lambda: OptimConfig(warmup_steps=1.5)], ids=["seq_len", "batch_size", "warmup"])
def test_sections_built_directly_check_integer_types(make):
    with pytest.raises(ValueError, match=r"expected an integer"):
        make()


def test_an_empty_section_in_a_file_takes_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\ntrainer:\n  precision: 32\n")
    cfg = load_config(tmp_path / "c.yaml", ["--optim.lr", "0.01"])
    assert (cfg.optim.lr, cfg.trainer.precision) == (0.01, 32)


def test_round_trip_through_plain_dicts():
    cfg = load_config("small.yaml")
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("trainer: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(yaml.YAMLError):
        load_config(path)
