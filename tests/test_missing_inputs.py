"""A missing checkpoint, tokenizer or data folder is reported before anything is started or built (no output
folder, no log), in one line that says where the file comes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import asen_main
import retrieval
import tgir
from models.released import RELEASED

ROOT = Path(__file__).resolve().parents[1]


def _fine_args(root: Path, out: Path, *flags: str) -> list[str]:
    return ["--config", str(ROOT / "configs/retrieval_tiny.yaml"), "--output_dir", str(out), *flags, "--set",
            f"data.root={root / 'fashiongen'}", f"data.tokenizer={root / 'tokenizer'}"]


@pytest.mark.parametrize("name", ["checkpoint_cmr_best_ft.pth", "pt_checkpoint.pth"])
def test_missing_released_checkpoint_says_where_to_download_it(synthetic_root, tmp_path, name):
    out = tmp_path / "out"
    flags = ("--evaluate", "--checkpoint", name) if name.startswith("checkpoint_cmr") else ("--checkpoint", name)
    with pytest.raises(FileNotFoundError) as err:
        retrieval.main(_fine_args(synthetic_root, out, *flags))
    message = str(err.value)
    assert name in message and RELEASED[name].source.split()[0] in message and "\n" not in message
    assert not out.exists()  # checked before the run started: no folder, no log, no config.yaml


def test_missing_run_checkpoint_says_to_train_first(synthetic_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"--checkpoint file not found: .*checkpoint_best\.pth; .*train first"):
        retrieval.main(_fine_args(synthetic_root, out, "--evaluate", "--checkpoint",
                                  str(tmp_path / "nowhere" / "checkpoint_best.pth")))
    assert not out.exists()


def test_evaluate_without_checkpoint_and_missing_resume(synthetic_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="evaluation needs the weights to evaluate: pass --checkpoint"):
        retrieval.main(_fine_args(synthetic_root, out, "--evaluate"))
    with pytest.raises(FileNotFoundError, match="--resume file not found: .*checkpoint_last.pth"):
        retrieval.main(_fine_args(synthetic_root, out, "--resume", str(tmp_path / "checkpoint_last.pth")))
    assert not out.exists()


def test_missing_tokenizer_and_data_before_anything_is_built(synthetic_root, tmp_path):
    out = tmp_path / "out"
    args = _fine_args(synthetic_root, out) + [f"data.tokenizer={tmp_path / 'no_tokenizer'}"]
    with pytest.raises(FileNotFoundError, match=r"tokenizer vocabulary not found: .*no_tokenizer/vocab.txt .*"
                                                r"build_vocab.py"):
        retrieval.main(args)
    args = _fine_args(synthetic_root, out) + [f"data.root={tmp_path / 'no_data'}"]
    with pytest.raises(FileNotFoundError, match=r"FashionGen file not found: .*no_data/fashiongen_256_256_train.h5"):
        retrieval.main(args)
    tgir_args = ["--config", "configs/tgir_tiny.yaml", "--output_dir", str(out), "--set",
                 f"data.root={tmp_path / 'no_fiq'}", f"data.tokenizer={synthetic_root / 'tokenizer'}"]
    with pytest.raises(FileNotFoundError, match="FashionIQ root not found"):
        tgir.main(tgir_args)
    assert not out.exists()


def test_asen_missing_resume_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume file not found: .*model_best\.pth\.tar; it would be the "
                                                r"best checkpoint of an ASEN\+\+ run"):
        asen_main.main(["--cfg", "configs/asen/synthetic/s2.yaml", "--set", f"SAVE_DIR={tmp_path}",
                        "--resume", str(tmp_path / "synthetic_s1" / "model_best.pth.tar"), "--test", "TEST"])


@pytest.mark.skipif((ROOT / "checkpoint_cmr_best_ft.pth").exists(), reason="the released checkpoint is present")
def test_entry_point_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(["bash", "eval_cmr.sh", "--set", f"data.root={tmp_path}", f"data.tokenizer={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "NGPU": "1", "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint_cmr_best_ft.pth" in lines[0] and "drive.google.com" in lines[0]
