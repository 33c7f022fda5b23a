"""The published command lines work here: every argument of the published scripts is native, an alias of a
config key, accepted with a warning, or rejected with one line naming what to use (exit status 2); the
published launch lines resolve to the same run as our launch scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config import FLAG_OVERRIDES, ConfigError, config_from_args, config_to_dict
from tasks.asen import AsenTask
from tasks.fashiongen import PretrainTask, RetrievalTask
from tasks.fine_blip import FineBlipTask
from tasks.published_flags import ASEN_FLAGS, PublishedFlag, add_published_flags
from tasks.tgir import TGIRTask
from tests.test_launch_resolved import resolve
from tests.test_launch_scripts import script_args

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"pretrain.py": PretrainTask, "retrieval.py": RetrievalTask, "tgir.py": TGIRTask,
         "train_blip.py": FineBlipTask}

# The argparse of the published scripts (Fashion-FINE pretrain.py / retrieval.py / tgir.py, BLIP).
_LAUNCH = ["--config", "--output_dir", "--evaluate", "--device", "--world_size", "--dist_url", "--distributed"]
_FINE = [*_LAUNCH, "--checkpoint", "--text_encoder", "--seed", "--data_root", "--pre_point", "--max_word_num"]
_ALBEF = [*_FINE, "--text_patch_ratio", "--img_patch_ratio", "--alpha_focal", "--gamma_focal", "--replace_kind_num",
          "--catemap_filename", "--product_list_filename"]
PUBLISHED = {"pretrain.py": _ALBEF, "retrieval.py": _ALBEF, "tgir.py": [*_FINE, "--train_class"],
             "train_blip.py": [*_LAUNCH, "--seed"]}

# The published launch lines and the launch script each corresponds to. Paths as in this repository: pretraining
# writes to output/FashionFINE_pt (the published pt.sh used ./FashionFINE_pt) and fine-tuning starts from there.
PUBLISHED_LINES = {
    "pt.sh": ("pretrain.py --data_root DATA --pre_point checkpoint_pretrain/pt_checkpoint.pth --output_dir "
              "output/FashionFINE_pt --text_patch_ratio 0.25 --img_patch_ratio 0.05 --alpha_focal 0.25 --gamma_focal 2.0 "
              "--config configs/pretrain.yaml", []),
    "retrieval.sh": ("retrieval.py --data_root DATA --pre_point output/FashionFINE_pt/checkpoint_best.pth --output_dir "
                     "output/FashionFINE_retrieval --text_patch_ratio 0.25 --img_patch_ratio 0.05 --alpha_focal 0.25 "
                     "--gamma_focal 2.0 --config configs/retrieval.yaml", []),
    "eval_cmr.sh": ("retrieval.py --data_root DATA --pre_point checkpoint_cmr_best_ft.pth --output_dir "
                    "output/FashionFINE_retrieval_eval --text_patch_ratio 0.25 --img_patch_ratio 0.05 --alpha_focal "
                    "0.25 --gamma_focal 2.0 --config configs/retrieval.yaml --evaluate", []),
    "tgir.sh": ("tgir.py --output_dir output/FashionFINE_tgir --pre_point output/FashionFINE_pt/checkpoint_best.pth "
                "--data_root DATA --config configs/tgir.yaml", []),
    "eval_tgir.sh": ("tgir.py --data_root DATA --pre_point checkpoint_tgir_best_ft.pth --output_dir "
                     "output/FashionFINE_TGIR_eval --evaluate", []),
}

# The config key of every alias, a valid value other than the default, and what the key resolves to.
ALIAS_SAMPLES: dict[str, tuple[str, str, Any]] = {
    "--device": ("runtime.device", "cpu", "cpu"), "--seed": ("runtime.seed", "7", 7),
    "--data_root": ("data.root", "some/where", "some/where"), "--max_word_num": ("data.max_words", "64", 64),
    "--text_patch_ratio": ("model.mix.txt_local_ratio", "0.3", 0.3),
    "--img_patch_ratio": ("model.mix.img_local_ratio", "0.1", 0.1),
    "--alpha_focal": ("loss.focal.alpha", "0.5", 0.5), "--gamma_focal": ("loss.focal.gamma", "1.5", 1.5),
    "--train_class": ("data.train_class", "dress", "dress"),
}
# A value that cannot be honoured for every key-less flag restricted to some values, and the pointer the
# error must give.
REJECTED_SAMPLES: dict[str, tuple[str, str]] = {
    "--replace_kind_num": ("3", "no config key"),
    "--catemap_filename": ("my_map.txt", "datasets/data/categorys_to_sign.txt"),
    "--product_list_filename": ("products.json", "--set data.root=DIR"),
    "--dist_url": ("tcp://127.0.0.1:23456", "torchrun --master_addr/--master_port"),
    "--text_encoder": ("roberta-base", "--set data.tokenizer=DIR"),
}
# Published argparse defaults that differ from our config's value on purpose.
DEFAULT_DIFFERS = {"--alpha_focal": "the published scripts pass 0.25", "--device": "auto picks CUDA when present"}


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RANK", raising=False)


def parse(entry: str, *argv: str) -> tuple[Any, Any]:
    task = TASKS[entry]
    args = task.build_parser("").parse_args(list(argv))
    return args, config_from_args(task.schema, args)


def key_value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def flags_of(entry: str) -> dict[str, PublishedFlag]:
    return {f.flag: f for f in TASKS[entry].published_flags}


@pytest.mark.parametrize("script", sorted(PUBLISHED_LINES))
def test_published_launch_line_resolves_like_our_script(tmp_path, script):
    published = PUBLISHED_LINES[script][0].split()
    (ours,) = script_args(tmp_path, script, {"DATA_ROOT": "DATA"})
    assert ours[0] == published[0]
    assert "--data_root" not in ours and "--pre_point" not in ours  # really two different argument lists
    mine, theirs = resolve(ours), resolve(published)
    assert theirs == mine
    assert mine["config"]["data"]["root"] == "DATA"  # the data root of both really reached the config


def test_eval_tgir_wrapper_and_help(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    (a,) = script_args(tmp_path / "a", "eval_TGIR.sh", {}, "ck.pth", "--set", "eval.gallery=split")
    (b,) = script_args(tmp_path / "b", "eval_tgir.sh", {}, "ck.pth", "--set", "eval.gallery=split")
    assert a == b and a[a.index("--checkpoint") + 1] == "ck.pth"
    (c,) = script_args(tmp_path / "c", "eval_tgir.sh", {}, "--help")
    assert c[-1] == "--help" and c[c.index("--checkpoint") + 1] == "checkpoint_tgir_best_ft.pth"
    out = subprocess.run(["bash", "eval_tgir.sh", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "usage: tgir.py" in out.stdout and "--data_root" in out.stdout and "--train_class" in out.stdout


@pytest.mark.parametrize("entry", sorted(PUBLISHED))
def test_table_covers_the_published_argparse(entry):
    table = flags_of(entry)
    assert sorted(table) == sorted(PUBLISHED[entry])
    parser = TASKS[entry].build_parser("")
    assert all(flag in parser._option_string_actions for flag in table)  # noqa: SLF001


@pytest.mark.parametrize("entry", sorted(PUBLISHED))
def test_every_alias_sets_its_key(entry):
    aliases = [f for f in flags_of(entry).values() if f.key]
    assert aliases
    base = config_to_dict(parse(entry)[1])
    for f in aliases:
        key, text, expected = ALIAS_SAMPLES[f.flag]
        assert f.key == key, f.flag
        args, cfg = parse(entry, f.flag, text)
        assert key_value(cfg, key) == expected, f.flag
        assert key_value(cfg, f.key) != key_value(parse(entry)[1], f.key), f"{f.flag}: sample is the default"
        changed = config_to_dict(cfg)
        assert sum(1 for k in _flat(changed) if _flat(changed)[k] != _flat(base).get(k)) == 1, f.flag
        assert [o.source for o in getattr(args, FLAG_OVERRIDES)] == [f"{f.flag} {text}"]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("entry", sorted(PUBLISHED))
def test_published_defaults_match_our_config(entry):
    cfg = parse(entry)[1]
    for f in flags_of(entry).values():
        if f.key and f.flag not in DEFAULT_DIFFERS and f.flag != "--data_root":
            assert key_value(cfg, f.key) == f.default, f.flag


@pytest.mark.parametrize("entry", sorted(PUBLISHED))
def test_keyless_flags_accept_the_published_value_and_reject_others(entry, capsys):
    default = config_to_dict(parse(entry)[1])
    keyless = [f for f in flags_of(entry).values() if not f.key and not f.native]
    assert keyless
    for f in keyless:
        value = None if f.nargs == "?" else str(f.default)
        args, cfg = parse(entry, *([f.flag] if value is None else [f.flag, value]))
        assert config_to_dict(cfg) == default and getattr(args, FLAG_OVERRIDES) == (), f.flag
        if f.honoured is not None:
            text, pointer = REJECTED_SAMPLES[f.flag]
            with pytest.raises(ConfigError) as err:
                parse(entry, f.flag, text)
            message = str(err.value)
            assert message.startswith(f"{f.flag} {text}: ") and pointer in message and "\n" not in message
    capsys.readouterr()


@pytest.mark.parametrize("argv", [["--world_size", "4"], ["--distributed"], ["--distributed", "False"],
                                  ["--text_encoder", "bert-base-uncased"]])
def test_ignored_flags_warn_once_and_change_nothing(argv, capsys):
    default = config_to_dict(parse("retrieval.py")[1])
    capsys.readouterr()
    _, cfg = parse("retrieval.py", *argv)
    err = capsys.readouterr().err.splitlines()
    assert config_to_dict(cfg) == default
    assert len(err) == 1 and err[0].startswith(f"warning: {' '.join(argv)}: "), err


def test_text_encoder_local_folder_is_the_tokenizer(tmp_path):
    args, cfg = parse("tgir.py", "--text_encoder", str(tmp_path))
    assert cfg.data.tokenizer == str(tmp_path)


@pytest.mark.parametrize("argv,key", [(["--seed", "abc"], "runtime.seed"), (["--device", "cuda:0"], "runtime.device"),
                                      (["--train_class", "coat"], "data.train_class"),
                                      (["--max_word_num", "4.5"], "data.max_words")])
def test_bad_alias_values_name_the_key(argv, key):
    with pytest.raises(ConfigError, match=key) as err:
        parse("tgir.py", *argv)
    assert " ".join(argv) in str(err.value)


def test_set_has_the_last_word_and_flags_apply_in_order():
    _, cfg = parse("retrieval.py", "--set", "data.root=B", "--data_root", "A")
    assert cfg.data.root == "B"
    _, cfg = parse("retrieval.py", "--data_root", "A", "--data_root", "C")
    assert cfg.data.root == "C"


def test_checkpoint_output_dir_evaluate_are_native():
    for flag in ("--checkpoint", "--pre_point"):
        args, cfg = parse("retrieval.py", flag, "w.pth", "--output_dir", "o", "--evaluate")
        request = RetrievalTask.make_request(args, cfg)
        assert (request.checkpoint, str(request.output_dir), request.evaluate) == ("w.pth", "o", True)


def test_asen_published_arguments():
    parser = AsenTask.build_parser("")
    add_published_flags(parser, ASEN_FLAGS)  # raises when one of them is not an argument of the parser
    args = parser.parse_args(["--cfg", "a.yaml", "b.yaml", "--resume", "r.pth.tar", "--test", "TEST"])
    assert (args.cfg, args.resume, args.test) == (["a.yaml", "b.yaml"], "r.pth.tar", "TEST")


def run_entry(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "FASHIONFINE_TRACEBACK")}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})


def test_unhonourable_value_exits_2_with_one_line():
    out = run_entry("pretrain.py", "--replace_kind_num", "3", "--data_root", "DATA")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --replace_kind_num 3: "), out.stderr


def test_help_config_shows_the_flag_as_origin():
    out = run_entry("retrieval.py", "--data_root", "DATA", "--text_patch_ratio", "0.3", "--world_size", "2",
                    "--help-config")
    assert out.returncode == 0, out.stderr
    assert "data.root: str = 'DATA'  (from --data_root DATA)" in out.stdout
    assert "model.mix.txt_local_ratio: float = 0.3  (from --text_patch_ratio 0.3)" in out.stdout
    assert out.stderr.startswith("warning: --world_size 2: ignored")


@pytest.mark.parametrize("script", sorted(PUBLISHED_LINES))
def test_script_and_entry_point_use_the_same_folder(tmp_path, script):
    """Without OUTPUT_DIR / --output_dir a launch script and `python <entry point> --config C` write to the same
    folder: the config's output_dir (training) or eval_output_dir (evaluation)."""
    (ours,) = script_args(tmp_path, script, {})
    assert "--output_dir" not in ours
    config = ours[ours.index("--config") + 1]
    plain = [ours[0], "--config", config] + (["--evaluate"] if "--evaluate" in ours else [])
    assert resolve(ours)["output_dir"] == resolve(plain)["output_dir"]
    published_folder = PUBLISHED_LINES[script][0].split("--output_dir ")[1].split()[0]
    assert resolve(ours)["output_dir"] == published_folder
