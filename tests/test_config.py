"""Config system: YAML 1.2 numbers, _base_ inheritance, several files, overrides, validation messages."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from engine.config import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    config_to_dict,
    describe_schema,
    field,
    load_config,
)
from engine.sections import OptimConfig, ScheduleConfig


@dataclass
class ModelSection:
    width: int = field(8, "hidden width")
    mode: Literal["compat", "fixed"] = field("fixed", "behaviour switch")
    ratios: list[float] = field([0.25, 0.75], "mixing ratios")


@dataclass
class Root:
    name: str = field("run", "run name")
    model: ModelSection = field(ModelSection)
    optim: OptimConfig = field(OptimConfig)
    schedule: ScheduleConfig = field(ScheduleConfig)
    weights: dict[str, float] = field({"itc": 1.0}, "loss weights")
    checkpoint: str | None = field(None, "optional path")


def write(path, text):
    path.write_text(text)
    return path


def test_scientific_notation_is_a_float(tmp_path):
    cfg = load_config(Root, [write(tmp_path / "a.yaml", "optim:\n  lr: 6e-5\n  weight_decay: 2e-2\n")])
    assert cfg.optim.lr == pytest.approx(6e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(0.02)


def test_int_accepted_for_float_but_not_str(tmp_path):
    cfg = load_config(Root, [write(tmp_path / "a.yaml", "optim:\n  lr: 1\n")])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    bad = write(tmp_path / "b.yaml", "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(Root, [bad])
    msg = str(err.value)
    assert "optim.lr" in msg and str(bad) in msg and "number" in msg and "'fast'" in msg


def test_unknown_key_lists_valid_keys_and_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "model:\n  widht: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Root, [bad])
    msg = str(err.value)
    assert "model.widht" in msg and str(bad) in msg
    assert "mode, ratios, width" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'bad_key'.*valid keys in top level: checkpoint, model"):
        load_config(Root, [write(tmp_path / "a.yaml", "bad_key: 1\n")])


def test_literal_and_bool_and_nested_list_types(tmp_path):
    with pytest.raises(ConfigError, match=r"model.mode' must be one of \['compat', 'fixed'\]"):
        load_config(Root, [write(tmp_path / "a.yaml", "model:\n  mode: legacy\n")])
    with pytest.raises(ConfigError, match=r"model.ratios\[1\]' expects a number"):
        load_config(Root, [write(tmp_path / "b.yaml", "model:\n  ratios: [0.1, x]\n")])
    with pytest.raises(ConfigError, match=r"model.width' expects an integer, got bool"):
        load_config(Root, [write(tmp_path / "c.yaml", "model:\n  width: true\n")])
    with pytest.raises(ConfigError, match=r"optim.betas' expects a list of 2 items"):
        load_config(Root, [write(tmp_path / "d.yaml", "optim:\n  betas: [0.9]\n")])


def test_base_inheritance_only_sizes_differ(tmp_path):
    write(tmp_path / "real.yaml", "name: real\nmodel:\n  width: 768\n  mode: compat\noptim:\n  lr: 6e-5\n")
    tiny = write(tmp_path / "tiny.yaml", "_base_: real.yaml\nmodel:\n  width: 16\n")
    cfg = load_config(Root, [tiny])
    assert (cfg.name, cfg.model.width, cfg.model.mode, cfg.optim.lr) == ("real", 16, "compat", 6e-5)


def test_base_chain_and_error_names_the_file_that_set_the_key(tmp_path):
    write(tmp_path / "a.yaml", "model:\n  width: wide\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\nname: b\n")
    with pytest.raises(ConfigError) as err:
        load_config(Root, [tmp_path / "b.yaml"])
    assert str(tmp_path / "a.yaml") in str(err.value)


def test_circular_base_rejected(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(Root, [tmp_path / "a.yaml"])


def test_several_files_merge_in_order(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\nmodel:\n  width: 4\n")
    b = write(tmp_path / "b.yaml", "name: b\n")
    cfg = load_config(Root, [a, b])
    assert (cfg.name, cfg.model.width) == ("b", 4)


def test_overrides_parse_yaml_values(tmp_path):
    a = write(tmp_path / "a.yaml", "optim:\n  lr: 6e-5\n")
    cfg = load_config(Root, [a], ["optim.lr=1e-5", "model.ratios=[0.5, 0.5]", "checkpoint=null",
                                  "weights.itm=2", "name=tiny run"])
    assert cfg.optim.lr == 1e-5 and cfg.model.ratios == [0.5, 0.5] and cfg.checkpoint is None
    assert cfg.weights == {"itc": 1.0, "itm": 2.0} and cfg.name == "tiny run"


def test_override_unknown_key_and_bad_type_name_the_override(tmp_path):
    with pytest.raises(ConfigError, match=r"--set bad_key=1: unknown key 'bad_key'"):
        load_config(Root, [], ["bad_key=1"])
    with pytest.raises(ConfigError, match=r"--set model.width=abc: key 'model.width' expects an integer"):
        load_config(Root, [], ["model.width=abc"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(Root, [], ["model.width"])


def test_section_validate_hook():
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        load_config(Root, [], ["optim.lr=0"])


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config(Root, ["nope.yaml"])


def test_cli_flags_both_spellings(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, str(a))
    args = parser.parse_args(["--set", "model.width=3", "--cfg-options", "optim.lr=2e-4"])
    cfg = config_from_args(Root, args)
    assert (cfg.name, cfg.model.width, cfg.optim.lr) == ("a", 3, 2e-4)


def test_cfg_flag_takes_several_files(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\n")
    b = write(tmp_path / "b.yaml", "model:\n  width: 5\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, None, flag="--cfg")
    cfg = config_from_args(Root, parser.parse_args(["--cfg", str(a), str(b)]))
    assert (cfg.name, cfg.model.width) == ("a", 5)


def test_roundtrip_and_description():
    cfg = load_config(Root)
    assert config_to_dict(cfg)["model"] == {"width": 8, "mode": "fixed", "ratios": [0.25, 0.75]}
    lines = describe_schema(Root)
    assert "model.width: int = 8  # hidden width" in lines
    assert any(line.startswith("optim.lr: float = 0.0001") for line in lines)
