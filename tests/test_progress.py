"""Progress display (engine.progress) through evaluation feature extraction: a tqdm bar on rank 0 on a
terminal when enabled; nothing when disabled, on other ranks, or (no carriage-return frames) off a terminal."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch

from engine import distributed as du
from engine.logger import get_logger
from engine.progress import Progress
from tasks.fine_common import extract


class Terminal(io.StringIO):
    """A stderr that claims to be interactive."""

    def isatty(self) -> bool:
        return True


def run_extract(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, enabled: bool) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    loader = [{"x": torch.full((2, 3), float(i))} for i in range(4)]
    out = extract(loader, lambda b: b["x"] * 2, torch.device("cpu"), "fp32", progress_bar=enabled,
                  desc="test images")
    assert out.shape == (8, 3) and out[-1, 0] == 6.0
    return stream.getvalue()


@pytest.fixture
def log_lines():
    """Messages of the framework logger during the test."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    log = get_logger()
    level, handlers = log.level, log.handlers[:]
    log.handlers = [handler]  # only ours: earlier tests may leave handlers on streams that are closed now
    log.setLevel(logging.INFO)
    yield lines
    log.handlers = handlers
    log.setLevel(level)


def test_bar_on_rank0_terminal_when_enabled(monkeypatch):
    text = run_extract(monkeypatch, Terminal(), enabled=True)
    assert "\r" in text and "test images" in text and "/4 " in text


def test_nothing_when_disabled(monkeypatch, log_lines):
    assert run_extract(monkeypatch, Terminal(), enabled=False) == ""
    assert log_lines == []


def test_nothing_on_other_ranks(monkeypatch, log_lines):
    monkeypatch.setattr(du, "is_main_process", lambda: False)
    assert run_extract(monkeypatch, Terminal(), enabled=True) == ""
    assert log_lines == []


def test_no_frames_off_a_terminal(monkeypatch):
    assert run_extract(monkeypatch, io.StringIO(), enabled=True) == ""


def test_log_lines_off_a_terminal(monkeypatch, log_lines):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with Progress(3, "epoch 0", True, interval=0.0) as progress:
        for _ in range(3):
            progress.update()
    assert stream.getvalue() == ""
    assert [line.split(" it/s")[0].rsplit(" ", 1)[0] for line in log_lines] == [
        "epoch 0 [1/3]", "epoch 0 [2/3]", "epoch 0 [3/3]"]
