"""Fashion-FINE cross-modal retrieval learns on the synthetic FashionGen set (CPU, tiny model).

Tiny pretraining (`configs/pretrain_tiny.yaml`, the session's `pretrained_tiny` run), then CMR fine-tuning
(`configs/retrieval_tiny.yaml`) from its `checkpoint_best.pth`. Both runs select on the same held-out train
products and evaluate the selected checkpoint once on the test (validation) split with the same evaluator, so
the two `results_test.json` files are directly comparable.

Measured on 2 CPU cores (the deterministic vocabulary of `build_vocab.py from-captions`; pretraining at the
config's lr 2e-3), test R@1 I2T / T2I in % (chance 0.30 / 0.30) and full_sum:

    pretraining seed       42 (config): 2.81/2.12  84.0          1: 3.82/1.52  72.8
    fine-tuning 10 ep, lr 3e-4:         3.51/5.15 105.1             5.52/3.03 115.9
    fine-tuning 20 ep, lr 5e-4 (config): 4.32/4.85 114.8            5.52/4.24 136.9
    fine-tuning 30 ep, lr 5e-4:         4.12/3.33 108.7

Sampled R@1 after fine-tuning 60-74 % (chance 1/11 = 9.1 %). With the earlier, non-deterministic vocabulary and
pretraining at lr 1e-3, 10 epochs at 3e-4 raised both directions in only 2 draws of 6, hence the config's 20
epochs at 5e-4. The test asserts what the issue asks: after fine-tuning R@1 >= 5x chance in both directions, and
better than before fine-tuning: in each direction R@1 + R@5 + R@10 higher, and full_sum higher. The R@1 alone is
not compared: on this split it counts ~10 (T2I) and ~36 (I2T) hits, and with the fused CPU AdamW (the default since
it replaced the per-tensor loop) the same runs gave R@1 3.61/3.33 -> 3.71/3.03, one hit either way, while
R@1+R@5+R@10 went 51.8 -> 59.6 (I2T) and 37.9 -> 47.3 (T2I). Wall time: pretraining ~130 s (the shared fixture),
fine-tuning ~35-60 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import retrieval
from datasets.fashiongen import FashionGenSplit
from evaluation.report import load_report
from tests.learning.conftest import data_overrides


def chance(root: Path) -> tuple[float, float, int]:
    """Full-protocol R@1 of a random ranking on the test split, in percent: I2T = 1/#products, T2I = mean
    over products of (#images of the product) / #images; and the number of test images."""
    split = FashionGenSplit(root / "fashiongen", "validation")
    images_per_product = np.diff(split.product_starts)
    return 100.0 / split.num_products, 100.0 * float(np.mean(images_per_product / split.num_rows)), split.num_rows


@pytest.mark.slow
def test_cmr_finetuning_beats_pretraining_and_chance(synthetic_root, pretrained_tiny, tmp_path):
    before = load_report(pretrained_tiny / "results_test.json", task="fashiongen_cmr")
    start = time.perf_counter()
    assert retrieval.main(["--config", "configs/retrieval_tiny.yaml", "--output_dir", str(tmp_path),
                           "--checkpoint", str(pretrained_tiny / "checkpoint_best.pth"),
                           "--set", *data_overrides(synthetic_root, "fashiongen")]) == 0
    seconds = time.perf_counter() - start
    # The same protocols on the same split: the options must agree or the comparison is meaningless.
    after = load_report(tmp_path / "results_test.json", task="fashiongen_cmr")
    same = {k: v for k, v in before["options"]["sampled"].items() if k != "files"}
    assert {k: v for k, v in after["options"]["sampled"].items() if k != "files"} == same
    assert after["selected_on"] == before["selected_on"] == "heldout"

    i2t_chance, t2i_chance, num_images = chance(synthetic_root)
    assert (before["options"]["num_rows"], after["options"]["num_rows"]) == (num_images, num_images)
    b, a = before["metrics"], after["metrics"]
    summary = (f"fine-tuning {seconds:.0f}s; R@1 I2T {b['txt_r1']:.2f} -> {a['txt_r1']:.2f}, T2I {b['img_r1']:.2f}"
               f" -> {a['img_r1']:.2f} (chance {i2t_chance:.2f}/{t2i_chance:.2f}); full_sum {b['full_sum']:.1f} -> "
               f"{a['full_sum']:.1f}; sampled R@1 {a['tiny_txt_r1']:.0f}/{a['tiny_img_r1']:.0f}")
    print(summary)
    for key, chance_r1 in (("txt_r1", i2t_chance), ("img_r1", t2i_chance)):
        assert b[key] >= 3 * chance_r1, summary  # pretraining learned (its own test asks 3x chance) ...
        assert a[key] >= 5 * chance_r1, summary  # ... and fine-tuning reaches 5x chance
    for side in ("txt", "img"):  # better than before fine-tuning, in each direction
        assert sum(a[f"{side}_r{k}"] for k in (1, 5, 10)) > sum(b[f"{side}_r{k}"] for k in (1, 5, 10)), summary
    assert a["full_sum"] > b["full_sum"], summary
    sampled_chance = 100.0 / (after["options"]["sampled"]["neg_len"] + 1)
    for key in ("tiny_txt_r1", "tiny_img_r1"):
        assert a[key] >= 4 * sampled_chance, summary
