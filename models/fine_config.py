"""Config sections of the Fashion-FINE models (sizes, feature mixing, losses) and their published-behaviour flags."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import field
from models.bert import TextConfig
from models.vit import VisionConfig


@dataclass
class MixConfig:
    """Global/local mixing weights (`--img_patch_ratio`, `--text_patch_ratio` of the published scripts)."""

    img_local_ratio: float = field(0.05, "weight of the attention-pooled patch feature")
    txt_local_ratio: float = field(0.25, "weight of the attention-pooled word feature")


@dataclass
class FineModelConfig:
    """The ALBEF-style Fashion-FINE model."""

    vision: VisionConfig = field(VisionConfig)
    text: TextConfig = field(TextConfig)
    embed_dim: int = field(256, "joint embedding width")
    queue_size: int = field(65536, "momentum feature queue length (a multiple of the global batch)")
    momentum: float = field(0.995, "EMA factor of the momentum encoders")
    temp_init: float = field(0.07, "initial contrastive temperature (learnable, clamped to [0.001, 0.5])")
    mix: MixConfig = field(MixConfig)
    symbol_phrase_ratio: float = field(0.05, "weight of the phrase feature in the symbol feature")

    def validate(self) -> None:
        if self.vision.width != self.text.hidden:
            # The shared attention pooling (W_v, att_layer_v) runs over both patch and word tokens.
            raise ValueError(f"vision.width {self.vision.width} must equal text.hidden {self.text.hidden}")
        if not 0.0 <= self.mix.img_local_ratio <= 1.0 or not 0.0 <= self.mix.txt_local_ratio <= 1.0:
            raise ValueError("mix ratios must lie in [0, 1]")


@dataclass
class FocalConfig:
    alpha: float = field(0.25, "focal weight a_f (`--alpha_focal`; argparse default 0.5, scripts 0.25)")
    gamma: float = field(2.0, "focal exponent (`--gamma_focal`)")


@dataclass
class LossConfig:
    """Loss hyper-parameters and weights."""

    focal: FocalConfig = field(FocalConfig)
    distill_alpha: float = field(0.4, "momentum-distillation weight alpha")
    distill_warmup: bool = field(True, "ramp alpha linearly over epoch 0")
    weights: dict[str, float] = field({}, "weight per named loss (default 1.0), e.g. {itc: 1, itm: 1}")


@dataclass(frozen=True)
class FineBehaviour:
    """Published-code behaviours a Fashion-FINE model can reproduce (True = as the published code did).

    The task resolves them from its `compat` config section (see docs/compat.md) and passes them in.
    """

    words_from_2: bool = False  # local text pooling starts at position 2 whatever the text (compat.text_layout)
    pool_padding: bool = False  # local pooling and phrases run over padding and [SEP] too (compat.local_pool_mask)
    itm_same_product_negatives: bool = False  # matching negatives may show the same product
    diagonal_targets: bool = False  # fine-tuning contrastive targets are the diagonal, queues carry no ids
    tgir_online_combine_proj: bool = False  # momentum TGIR query through the online combine projection
    momentum_local_mix: bool = False  # momentum features mix local features too (ablation)
    eval_pool_from_1: bool = False  # BLIP evaluation pools words from position 1 even after a sign
