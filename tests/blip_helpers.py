"""Shared pieces of the Fashion-FINE-on-BLIP tests: synthetic data with extracted images, tiny configs."""

from __future__ import annotations

from pathlib import Path

import prepare_dataset
from datasets.synthetic.__main__ import main as synthetic_main
from engine.config import load_config
from scripts import build_vocab
from tasks.blip_schema import BlipRetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = {stage: ROOT / f"configs/blip/retrieval_fashionfine_{stage}_tiny.yaml" for stage in ("1", "2", "eval")}


def synthetic_blip_data(out: Path, *, image_size: int = 64, train_products: int = 240,
                        val_products: int = 330) -> tuple[Path, Path]:
    """Synthetic FashionGen under `out/fashiongen` prepared for BLIP (annotation JSONs, images) and a
    WordPiece vocabulary in `out/tokenizer`; returns (data root, tokenizer folder)."""
    assert synthetic_main(["fashiongen", "--out", str(out), "--image-size", str(image_size), "--train-products",
                           str(train_products), "--val-products", str(val_products), "--quiet"]) == 0
    data = out / "fashiongen"
    assert prepare_dataset.main(["--data-root", str(data), "--extract-images", "--quiet"]) == 0
    assert build_vocab.main(["from-captions", "--data-root", str(data), "--out", str(out / "tokenizer")]) == 0
    return data, out / "tokenizer"


def blip_view_of(synthetic_root: Path, out: Path) -> tuple[Path, Path]:
    """The session's synthetic FashionGen files (the `synthetic_root` fixture, which must stay untouched)
    prepared for BLIP in `out/fashiongen`: the .h5 files linked, annotation JSONs and images written there.
    Returns (data root, the session's tokenizer folder)."""
    data = out / "fashiongen"
    data.mkdir(parents=True)
    for h5 in sorted((synthetic_root / "fashiongen").glob("fashiongen_256_256_*.h5")):
        (data / h5.name).symlink_to(h5)
    assert prepare_dataset.main(["--data-root", str(data), "--extract-images", "--quiet"]) == 0
    return data, synthetic_root / "tokenizer"


def data_overrides(data: Path, tokenizer: Path) -> list[str]:
    return [f"data.root={data}", f"data.tokenizer={tokenizer}", "train.progress_bar=false"]


def tiny_config(stage: str = "2", overrides: list[str] | tuple[str, ...] = ()) -> BlipRetrievalConfig:
    return load_config(BlipRetrievalConfig, [TINY[stage]], list(overrides))
