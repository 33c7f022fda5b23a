"""engine.atomic: every output file is replaced whole, keeps the usual permissions, and leaves no temporary file."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from engine.atomic import atomic_write, torch_save, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_helpers_write_the_expected_bytes(tmp_path):
    assert write_text(tmp_path / "a" / "t.txt", "x\r\ny\n").read_bytes() == b"x\r\ny\n"  # folders made, newlines kept
    assert (write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]}, indent=None, sort_keys=True).read_text()
            == '{"a":[1,2],"b":1}\n')
    assert write_json(tmp_path / "i.json", {"é": 1}, ensure_ascii=False).read_text(encoding="utf-8") == \
        json.dumps({"é": 1}, indent=1, ensure_ascii=False) + "\n"
    assert torch.load(torch_save(tmp_path / "w.pth", {"w": torch.ones(2)}))["w"].tolist() == [1.0, 1.0]
    with atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = write_text(tmp_path / "out.txt", "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write("half")
            assert len(os.listdir(tmp_path)) == 2  # the temporary file sits next to the target
            raise RuntimeError("boom")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.txt"]


def test_permissions_follow_the_umask(tmp_path, umask_022):
    for path in (write_text(tmp_path / "t.txt", "x"), torch_save(tmp_path / "w.pth", {})):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(write_text(tmp_path / "private.txt", "x").stat().st_mode) == 0o600


def test_text_mode_only_w_or_wb(tmp_path):
    with pytest.raises(ValueError, match="'w' or 'wb'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
