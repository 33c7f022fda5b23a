"""Config sections of the Fashion-FINE models: sizes, feature mixing, losses and compat switches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import field
from models.bert import TextConfig
from models.vit import VisionConfig

Mode = Literal["compat", "fixed"]


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


@dataclass
class CompatConfig:
    """Published-code behaviours (fine-model.md §8). `mode` sets every switch; a switch set here overrides it.

    compat = reproduce the published code (released checkpoints and numbers), fixed = corrected default.
    """

    mode: Mode = field("fixed", "default for every switch below")
    mlm_label_alignment: Mode | None = field(None, "D1 masked-LM labels permuted (compat) or aligned")
    rtd_sampling: Mode | None = field(None, "D2 floor(1.5%) replacements, loss over padding (compat)")
    rtd_vocab: Mode | None = field(None, "D3 replacements from the whole vocabulary (compat)")
    local_pool_mask: Mode | None = field(None, "D5 local pooling/phrases over padding too (compat)")
    text_layout: Mode | None = field(None, "D6/D8 words from position 2 without a sign, no [SEP] in training")
    itm_negative_mask: Mode | None = field(None, "D7 same-product matching negatives allowed (compat)")
    retrieval_id_targets: Mode | None = field(None, "D8 fine-tuning ITC with diagonal targets (compat)")
    tgir_momentum_proj: Mode | None = field(None, "D9 momentum TGIR query through the online projection")
    no_decay_temp: Mode | None = field(None, "D14 weight decay on the temperature (compat)")
    blip_sign_token: Mode | None = field(
        None, "D13 BLIP: the sign is the word `xxx_sign` the tokenizer splits, kept in evaluation queries "
              "(compat); fixed: the nine `[xxx_sign]` are special tokens (embedding rows added if absent) "
              "and evaluation queries carry no sign")
    blip_eval_pool_range: Mode | None = field(
        None, "BLIP evaluation pools words from position 1 even when position 1 holds the sign (compat); "
              "fixed: from right after the sign when the query has one, as in training")
    blip_stage1_schedule: Mode | None = field(
        None, "BLIP stage 1: the cosine spans train.schedule_epochs (published 20) while the loop stops "
              "after train.epochs (5) (compat); fixed: the cosine spans the epochs that run")
    momentum_local_mix: bool = field(False, "ablation O2: momentum features mix local features too")

    def is_compat(self, switch: str) -> bool:
        """True when `switch` follows the published behaviour."""
        value = getattr(self, switch)
        return (self.mode if value is None else value) == "compat"
