"""The `compat` config section: published-code behaviours, resolved here once into the plain arguments that
models and datasets take (docs/compat.md describes every switch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datasets.pretrain_text import PretrainTextOptions
from engine.config import field
from models.fine_config import FineBehaviour

Mode = Literal["compat", "fixed"]


@dataclass
class CompatConfig:
    """Published-code behaviours. `mode` sets every switch; a switch set here overrides it.

    compat = reproduce the published code (released checkpoints and numbers), fixed = corrected default.
    """

    mode: Mode = field("fixed", "default for every switch below")
    mlm_label_alignment: Mode | None = field(None, "masked-LM labels permuted (compat) or aligned")
    rtd_sampling: Mode | None = field(None, "floor(1.5%) replacements, loss over padding (compat)")
    rtd_vocab: Mode | None = field(None, "replacements from the whole vocabulary (compat)")
    local_pool_mask: Mode | None = field(None, "local pooling/phrases over padding too (compat)")
    text_layout: Mode | None = field(None, "words from position 2 without a sign, no [SEP] in training (compat)")
    itm_negative_mask: Mode | None = field(None, "same-product matching negatives allowed (compat)")
    retrieval_id_targets: Mode | None = field(None, "fine-tuning ITC with diagonal targets (compat)")
    tgir_momentum_proj: Mode | None = field(None, "momentum TGIR query through the online projection (compat)")
    no_decay_temp: Mode | None = field(None, "weight decay on the temperature (compat)")
    blip_sign_token: Mode | None = field(
        None, "BLIP: the sign is the word `xxx_sign` the tokenizer splits, kept in evaluation queries "
              "(compat); fixed: the nine `[xxx_sign]` are special tokens (embedding rows added if absent) "
              "and evaluation queries carry no sign")
    blip_eval_pool_range: Mode | None = field(
        None, "BLIP evaluation pools words from position 1 even when position 1 holds the sign (compat); "
              "fixed: from right after the sign when the query has one, as in training")
    blip_stage1_schedule: Mode | None = field(
        None, "BLIP stage 1: the cosine spans train.schedule_epochs (published 20) while the loop stops "
              "after train.epochs (5) (compat); fixed: the cosine spans the epochs that run")
    momentum_local_mix: bool = field(False, "ablation: momentum features mix local features too")

    def is_compat(self, switch: str) -> bool:
        """True when `switch` follows the published behaviour."""
        value = getattr(self, switch)
        return (self.mode if value is None else value) == "compat"

    def mode_of(self, switch: str) -> Mode:
        return "compat" if self.is_compat(switch) else "fixed"

    def model_behaviour(self) -> FineBehaviour:
        """The model-level behaviours these switches select."""
        return FineBehaviour(
            words_from_2=self.is_compat("text_layout"), pool_padding=self.is_compat("local_pool_mask"),
            itm_same_product_negatives=self.is_compat("itm_negative_mask"),
            diagonal_targets=self.is_compat("retrieval_id_targets"),
            tgir_online_combine_proj=self.is_compat("tgir_momentum_proj"),
            momentum_local_mix=self.momentum_local_mix, eval_pool_from_1=self.is_compat("blip_eval_pool_range"))

    def pretrain_text_options(self, wordnet_path: str | None) -> PretrainTextOptions:
        """The pretraining text-corruption behaviours (masked LM, replaced tokens)."""
        return PretrainTextOptions(self.mode_of("mlm_label_alignment"), self.mode_of("rtd_sampling"),
                                   self.mode_of("rtd_vocab"), wordnet_path)
