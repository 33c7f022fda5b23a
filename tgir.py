r"""Fashion-FINE text-guided image retrieval on FashionIQ: fine-tuning (`bash tgir.sh`) and evaluation
(`bash eval_tgir.sh CHECKPOINT`, i.e. `--evaluate`).

    python tgir.py --config configs/tgir.yaml --checkpoint output/FashionFINE_pt/checkpoint_best.pth \
        --output_dir output/FashionFINE_tgir [--set key=value ...] [--resume OUT/checkpoint_last.pth]
    python tgir.py --config configs/tgir.yaml --checkpoint checkpoint_tgir_best_ft.pth --evaluate \
        [--set eval.gallery=triplets|split eval.exclude_reference=true]

Evaluation prints R@1/5/10/50 per category (dress, shirt, toptee) and the averages of R@10 and R@50 the
paper reports, and writes `results_val.json` with the gallery options used.
"""

from __future__ import annotations

from engine.run import run_main
from tasks import runner
from tasks.tgir import TGIRTask


def main(argv: list[str] | None = None) -> int:
    return runner.main(TGIRTask, argv, __doc__)


if __name__ == "__main__":
    run_main(main)
