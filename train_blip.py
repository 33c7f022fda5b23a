r"""Fashion-FINE on BLIP: two-stage fine-tuning on FashionGen (`bash fashionfine_blip.sh`) and evaluation
(`bash eval_fashionfine_blip.sh CHECKPOINT`, i.e. `--evaluate`).

    # stage 1: sign-prefixed captions, phrase branch and symbol loss, from BLIP's model_base.pth
    python train_blip.py --config configs/blip/retrieval_fashionfine_1.yaml --checkpoint model_base.pth \
        --output_dir output/retrieval_fashionfine_fashiongen_ft_1
    # stage 2: plain captions, from a chosen stage-1 checkpoint (published: the third epoch's)
    python train_blip.py --config configs/blip/retrieval_fashionfine_2.yaml \
        --checkpoint output/retrieval_fashionfine_fashiongen_ft_1/checkpoint_2.pth \
        --output_dir output/retrieval_fashionfine_fashiongen_ft_2 [--set key=value ...] [--resume OUT/checkpoint_last.pth]
    # evaluation of a Fashion-FINE-on-BLIP model (strict load)
    python train_blip.py --config configs/blip/retrieval_fashionfine_eval.yaml \
        --checkpoint fashionfine_blip_3modules.pth --evaluate [--set eval.protocol=full|sampled|both]

Data: `python prepare_dataset.py --data-root DATA_ROOT --extract-images` writes the annotation JSONs and the
image files. Evaluation prints R@1/5/10 for image->text and text->image under the published full protocol
(each query's top k_test=256 scores kept) and, with `eval.protocol: both`, the sampled protocol (1,000
queries x 101 candidates), and writes `results_test.json`.
"""

from __future__ import annotations

from engine.run import run_main
from tasks import runner
from tasks.fine_blip import FineBlipTask


def main(argv: list[str] | None = None) -> int:
    return runner.main(FineBlipTask, argv, __doc__)


if __name__ == "__main__":
    run_main(main)
