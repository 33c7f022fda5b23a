r"""Fashion-FINE cross-modal retrieval on FashionGen: fine-tuning (`bash retrieval.sh`) and evaluation
(`bash eval_cmr.sh CHECKPOINT`, i.e. `--evaluate`).

    python retrieval.py --config configs/retrieval.yaml --checkpoint output/FashionFINE_pt/checkpoint_best.pth \
        --output_dir output/FashionFINE_retrieval [--set key=value ...] [--resume OUT/checkpoint_last.pth]
    python retrieval.py --config configs/retrieval.yaml --checkpoint checkpoint_cmr_best_ft.pth --evaluate \
        [--set eval.protocol=full|sampled|both]

Evaluation prints R@1/5/10 for image->text and text->image under the full protocol (every test image
against every test text) and the sampled protocol (1,000 queries x 101 candidates) and writes
`results_test.json`.
"""

from __future__ import annotations

from engine.run import run_main
from tasks import runner
from tasks.fashiongen import RetrievalTask


def main(argv: list[str] | None = None) -> int:
    return runner.main(RetrievalTask, argv, __doc__)


if __name__ == "__main__":
    run_main(main)
