"""Fixtures shared by the Fashion-FINE learning tests: one tiny pretraining run per session.

`pretrained_tiny` runs `pretrain.py --config configs/pretrain_tiny.yaml` unchanged (only the data and
tokenizer paths point at the session's synthetic data, and the progress bar is off) once, in-process, and
returns its output folder: `checkpoint_best.pth` (selected on held-out train products), `checkpoint_last.pth`,
`results_test.json` (test-split CMR table of the selected checkpoint), `log.txt`, `log.jsonl`, `config.yaml`.
Tests must not modify it. About 2 minutes on 2 CPU cores (25 epochs of 37 steps, 0.5M parameters).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

PRETRAIN_CONFIG = "configs/pretrain_tiny.yaml"


def data_overrides(root: Path, kind: str) -> list[str]:
    """`--set` values pointing a tiny config at the synthetic data (`kind`: fashiongen or fashioniq)."""
    return [f"data.root={root / kind}", f"data.tokenizer={root / 'tokenizer'}", "train.progress_bar=false"]


@pytest.fixture(scope="session")
def pretrained_tiny(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one tiny Fashion-FINE pretraining run on the synthetic FashionGen set."""
    import pretrain

    out = tmp_path_factory.mktemp("pretrained_tiny")
    start = time.perf_counter()
    assert pretrain.main(["--config", PRETRAIN_CONFIG, "--output_dir", str(out),
                          "--set", *data_overrides(synthetic_root, "fashiongen")]) == 0
    (out / "fixture_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n", encoding="utf-8")
    for name in ("checkpoint_best.pth", "results_test.json"):
        assert (out / name).is_file(), f"pretraining did not write {name}"
    return out
