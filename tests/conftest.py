"""Shared fixtures: the synthetic FashionGen + FashionIQ data, prepared and with a vocabulary, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def build_synthetic_root(root: Path) -> Path:
    """Write synthetic FashionGen and FashionIQ data under `root`, run prepare_dataset.py on both and build the
    vocabulary into `root/tokenizer` (the same steps as scripts/demo.sh, in-process to save interpreter starts)."""
    import prepare_dataset
    from datasets.synthetic.__main__ import main as synthetic_main
    from scripts.build_vocab import main as build_vocab_main

    for kind in ("fashiongen", "fashioniq"):
        assert synthetic_main([kind, "--out", str(root), "--quiet"]) == 0
    assert prepare_dataset.main(["--data-root", str(root / "fashiongen"),
                                 "--fashioniq-root", str(root / "fashioniq"), "--quiet"]) == 0
    assert build_vocab_main(["from-captions", "--data-root", str(root), "--out", str(root / "tokenizer")]) == 0
    return root


@pytest.fixture(scope="module")
def restore_torch_globals() -> Iterator[None]:
    """For modules whose in-process runs set torch's thread count and deterministic mode (`pytestmark =
    pytest.mark.usefixtures("restore_torch_globals")`): the next module gets the originals."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder with `fashiongen/` (prepared .h5 splits), `fashioniq/` (prepared captions) and
    `tokenizer/vocab.txt`. Shared by the whole session: tests must not modify it."""
    return build_synthetic_root(tmp_path_factory.mktemp("synthetic"))


# Under pytest-xdist (scripts/test.sh runs two workers) each file goes to one worker as a whole, so its module
# fixtures are built once; the learning tests that share the session's tiny pretraining run go together.
SHARED_GROUPS = {"test_cmr_learning.py": "pretrained_tiny", "test_tgir_learning.py": "pretrained_tiny",
                 "test_fine_pretrain_learning.py": "pretrained_tiny"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(item.path.name, str(item.path))))
