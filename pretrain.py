r"""Fashion-FINE pretraining on FashionGen (`bash pt.sh`).

    python pretrain.py --config configs/pretrain.yaml --checkpoint checkpoint_pretrain/pt_checkpoint.pth \
        --output_dir output/FashionFINE_pt [--set key=value ...] [--resume OUT/checkpoint_last.pth]

Five losses (contrastive, matching, symbol, masked-LM, replaced-token), checkpoint selection on held-out
training products (`data.select_on: test` reproduces the published selection on the test split), then one
evaluation of the selected checkpoint on the test split (`results_test.json`).
"""

from __future__ import annotations

from engine.run import run_main
from tasks import runner
from tasks.fashiongen import PretrainTask


def main(argv: list[str] | None = None) -> int:
    return runner.main(PretrainTask, argv, __doc__)


if __name__ == "__main__":
    run_main(main)
