"""Fashion-FINE pretraining on FashionGen (`bash pt.sh`).

    python pretrain.py --config configs/pretrain.yaml --checkpoint checkpoint_pretrain/pt_checkpoint.pth \
        --output_dir output/FashionFINE_pt [--set key=value ...] [--resume OUT/checkpoint_last.pth]

Five losses (contrastive, matching, symbol, masked-LM, replaced-token), checkpoint selection on held-out
training products (`data.select_on: test` reproduces the published selection on the test split), then one
evaluation of the selected checkpoint on the test split (`results_test.json`).
"""

from __future__ import annotations

from typing import Any

from datasets.fashiongen import FashionGenPretrainDataset, FashionGenSplit
from datasets.pretrain_text import PretrainTextOptions
from engine.run import run_main
from models.fine_pretrain import FinePretrainModel
from tasks.fashiongen_run import parse, run_fashiongen
from tasks.fine_schema import PretrainConfig


def make_dataset(cfg: PretrainConfig, split: FashionGenSplit, tokenizer: Any,
                 products: list[int] | None) -> FashionGenPretrainDataset:
    """One item per training row; text corruption switches (D1-D3) follow `compat`."""
    def mode(switch: str) -> str:
        return "compat" if cfg.compat.is_compat(switch) else "fixed"

    options = PretrainTextOptions(mode("mlm_label_alignment"), mode("rtd_sampling"), mode("rtd_vocab"),
                                  cfg.data.wordnet_path)
    return FashionGenPretrainDataset(split, tokenizer, image_res=cfg.model.vision.image_res,
                                     randaugment_magnitude=cfg.data.randaugment_magnitude, products=products,
                                     seed=cfg.runtime.seed, max_length=cfg.data.max_words, text_options=options)


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse(argv, __doc__, PretrainConfig, "configs/pretrain.yaml")
    return run_fashiongen(args, cfg, FinePretrainModel, make_dataset)


if __name__ == "__main__":
    run_main(main)
