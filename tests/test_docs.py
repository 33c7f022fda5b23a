"""The method notes live in the repository: every compat switch `--help-config` lists has a section in
docs/compat.md, and nothing points users to files outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from engine.config import describe_schema
from tasks.blip_schema import BlipRetrievalConfig
from tasks.fine_schema import PretrainConfig, RetrievalConfig, TGIRConfig

ROOT = Path(__file__).resolve().parents[1]
COMPAT_DOC = (ROOT / "docs" / "compat.md").read_text()


@pytest.mark.parametrize("schema", [PretrainConfig, RetrievalConfig, TGIRConfig, BlipRetrievalConfig],
                         ids=lambda s: s.__name__)
def test_every_compat_switch_has_a_section(schema):
    keys = [line.split(":")[0] for line in describe_schema(schema) if line.startswith("compat.")]
    switches = [k for k in keys if k != "compat.mode"]
    assert len(switches) >= 12
    headings = set(re.findall(r"^### (compat\.\w+)$", COMPAT_DOC, flags=re.M))
    assert [k for k in switches if k not in headings] == []
    assert "compat.mode" in COMPAT_DOC


def test_no_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\.\./shared|/shared/(spec|parity|perf|seeds)|fine-model\.md|fine-data-eval\.md|asenpp\.md")
    this = Path(__file__).relative_to(ROOT).as_posix()
    hits = []
    for name in files:
        path = ROOT / name
        if name.startswith(".ci/") or name == this or not path.is_file() or path.suffix in (".pt", ".pth", ".png"):
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert hits == []
