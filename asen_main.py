"""ASEN++ entry point, with the published command lines:

    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s1.yaml
    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s2.yaml --resume runs/DARN_s1/checkpoint.pth.tar
    python asen_main.py --cfg configs/asen/DARN/DARN.yaml configs/asen/DARN/s2.yaml --resume runs/DARN_s2/model_best.pth.tar --test TEST
    python asen_main.py --cfg ... --resume <checkpoint> --embed <image folder> --attribute "sleeve length" --out emb.npz

`--resume` with a checkpoint of another stage (stage 1's, given to stage 2) or a published file initialises
the weights only; a checkpoint of the same stage continues exactly. Multi-GPU: `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

from engine.run import run_main
from tasks import runner
from tasks.asen import AsenTask


def main(argv: list[str] | None = None) -> int:
    return runner.main(AsenTask, argv, __doc__)


if __name__ == "__main__":
    run_main(main)
