"""Fashion-FINE cross-modal retrieval on FashionGen: fine-tuning (`bash retrieval.sh`) and evaluation
(`bash eval_cmr.sh CHECKPOINT`, i.e. `--evaluate`).

    python retrieval.py --config configs/retrieval.yaml --checkpoint FashionFINE_pt/checkpoint_best.pth \
        --output_dir output/FashionFINE_retrieval [--set key=value ...] [--resume OUT/checkpoint_last.pth]
    python retrieval.py --config configs/retrieval.yaml --checkpoint checkpoint_cmr_best_ft.pth --evaluate \
        [--set eval.protocol=full|sampled|both]

Evaluation prints R@1/5/10 for image->text and text->image under the full protocol (every test image
against every test text) and the sampled protocol (1,000 queries x 101 candidates) and writes
`results_test.json`.
"""

from __future__ import annotations

from typing import Any

from datasets.fashiongen import FashionGenCMRTrainDataset, FashionGenSplit
from engine.run import run_main
from models.fine_retrieval import FineRetrievalModel
from tasks.fashiongen_run import parse, run_fashiongen
from tasks.fine_schema import RetrievalConfig


def make_dataset(cfg: RetrievalConfig, split: FashionGenSplit, tokenizer: Any,
                 products: list[int] | None) -> FashionGenCMRTrainDataset:
    """One item per training product (a random row of it each epoch)."""
    return FashionGenCMRTrainDataset(split, tokenizer, image_res=cfg.model.vision.image_res,
                                     randaugment_magnitude=cfg.data.randaugment_magnitude, products=products,
                                     seed=cfg.runtime.seed, max_length=cfg.data.max_words,
                                     legacy_tokenization=cfg.compat.is_compat("text_layout"))


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse(argv, __doc__, RetrievalConfig, "configs/retrieval.yaml")
    return run_fashiongen(args, cfg, FineRetrievalModel, make_dataset)


if __name__ == "__main__":
    run_main(main)
