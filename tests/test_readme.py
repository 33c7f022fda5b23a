"""Every `.venv/bin/python` command in the README's shell blocks runs as written, in order, on the synthetic data
(in a scratch copy of the checkout, so the repository's own data/ and output/ are not touched), then every
```python block."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = ".venv/bin/python "
SCRATCH = {"data", "output", "runs", ".git"}  # made fresh in the scratch checkout


def readme_commands() -> list[str]:
    """The `.venv/bin/python ...` lines of the README's ```bash blocks, in order (comments stripped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(PREFIX):
                commands.append(line)
    return commands


def test_readme_has_the_commands_a_newcomer_needs() -> None:
    commands = readme_commands()
    for needed in ("-m datasets.synthetic", "prepare_dataset.py", "build_vocab.py", "pretrain.py", "retrieval.py",
                   "--evaluate", "plot_run.py", "asen_main.py", "--report-to tensorboard", "search.py query"):
        assert any(needed in c for c in commands), needed


def test_every_readme_python_command_runs_as_written(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in the checkout (bash scripts/setup.sh creates it)")
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in SCRATCH:
            (work / entry.name).symlink_to(entry)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in readme_commands():
        out = subprocess.run(shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{command}\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S):
        out = subprocess.run([str(ROOT / PREFIX.strip()), "-c", block], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{block}\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
    # What the commands claim to produce is there.
    search = work / "output/readme/search"
    assert (search / "fashiongen_test.index").is_file() and (search / "query.html").is_file()
    assert (work / "output/readme/export/preprocessing.json").is_file()
    run = work / "output/readme/retrieval"
    assert (run / "checkpoint_best.pth").is_file() and (run / "curves.png").is_file()
    assert any((run / "tensorboard").iterdir())
    final = [json.loads(line) for line in (work / "output/readme/retrieval_eval/log.jsonl").read_text().splitlines()]
    assert final[-1]["kind"] == "final" and "r_mean" in final[-1]
    assert (work / "output/readme/asen/synthetic_s1/map_test.json").is_file()


def test_readme_python_commands_name_the_venv_interpreter() -> None:
    """A bare `python` in a shell block fails on a machine whose system Python lacks the requirements."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            assert not re.match(r"\s*python3? ", line), line
