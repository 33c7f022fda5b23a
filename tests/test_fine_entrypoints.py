"""pretrain.py refuses bad input with one `error: ...` line on stderr and exit status 2 (no traceback).

Two cases run the real command line in a subprocess; the others call the same `run_main(pretrain.main)` wrapper
in-process (an interpreter start with torch costs ~5 s of CPU per case on the 2-core test machine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pretrain
from engine.run import run_main

ROOT = Path(__file__).resolve().parents[1]


def run_pretrain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "FASHIONFINE_TRACEBACK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "pretrain.py", "--output_dir", str(tmp_path / "out"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def in_process_error(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                     *args: str) -> str:
    """`python pretrain.py ARGS` through the entry point's own wrapper, without a new interpreter."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "FASHIONFINE_TRACEBACK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--output_dir", str(tmp_path / "out"), *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(pretrain.main)
    err = capsys.readouterr().err
    return one_error_line(subprocess.CompletedProcess([], exit_info.value.code, "", err))


def data_args(root: Path, data: Path | None = None, tokenizer: Path | None = None) -> list[str]:
    return ["--config", "configs/pretrain_tiny.yaml", "--set", f"data.root={data or root / 'fashiongen'}",
            f"data.tokenizer={tokenizer or root / 'tokenizer'}", "runtime.num_workers=0"]


def test_unknown_key_names_it_and_lists_the_valid_keys(tmp_path):
    line = one_error_line(run_pretrain(tmp_path, "--config", "configs/pretrain.yaml", "--set", "bad_key=1"))
    assert "unknown key 'bad_key'" in line
    assert "valid keys in top level: checkpoint, compat, data, eval, eval_output_dir, loss, model, optim" in line


def test_missing_data_root_names_the_file_and_the_command(synthetic_root, tmp_path):
    missing = tmp_path / "no_data"
    line = one_error_line(run_pretrain(tmp_path, *data_args(synthetic_root, data=missing)))
    assert re.search(rf"{re.escape(str(missing))}/fashiongen_256_256_(train|validation)\.h5", line), line
    assert f"python -m datasets.synthetic fashiongen --out {missing}" in line


def test_unknown_nested_key(tmp_path, capsys, monkeypatch):
    line = in_process_error(tmp_path, capsys, monkeypatch, "--config", "configs/pretrain.yaml",
                            "--set", "model.queue=8")
    assert "unknown key 'model.queue'" in line and "valid keys in model:" in line and "queue_size" in line


def test_unprepared_data_root_names_prepare_dataset(synthetic_root, tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "validation"):
        name = f"fashiongen_256_256_{split}.h5"
        shutil.copy(synthetic_root / "fashiongen" / name, raw / name)
    line = in_process_error(tmp_path, capsys, monkeypatch, *data_args(synthetic_root, data=raw))
    assert "prepare_dataset.py" in line and str(raw) in line


def test_missing_vocabulary_names_vocab_txt_and_build_vocab(synthetic_root, tmp_path, capsys, monkeypatch):
    line = in_process_error(tmp_path, capsys, monkeypatch, *data_args(synthetic_root, tokenizer=tmp_path / "no_tok"))
    assert f"{tmp_path / 'no_tok'}/vocab.txt" in line and "scripts/build_vocab.py" in line


def test_evaluate_without_checkpoint(synthetic_root, tmp_path, capsys, monkeypatch):
    line = in_process_error(tmp_path, capsys, monkeypatch, *data_args(synthetic_root), "--evaluate")
    assert "evaluation needs the weights to evaluate: pass --checkpoint" in line


@pytest.mark.parametrize("queue,batch", [(40, 16), (8, 16)])
def test_queue_not_a_multiple_of_the_global_batch(synthetic_root, tmp_path, capsys, monkeypatch, queue, batch):
    line = in_process_error(tmp_path, capsys, monkeypatch, *data_args(synthetic_root), f"model.queue_size={queue}",
                            f"data.batch_size={batch}")
    assert f"model.queue_size {queue} is not a multiple of the global batch {batch}" in line
