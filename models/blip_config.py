"""Config section of the Fashion-FINE-on-BLIP model.

The sizes and mixing keys are those of the ALBEF variant (`FineModelConfig`); the BLIP values (ViT-B/16 at
384 px with checkpointing on the last 4 blocks, MED BERT with cross-attention in every layer and no
token-type embeddings, queue 57600) are set in `configs/blip/blip_model.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import field
from models.fine_config import FineModelConfig


@dataclass
class BlipModelConfig(FineModelConfig):
    """The BLIP-variant retrieval model of one of the two training stages."""

    stage: Literal[1, 2] = field(
        2, "1: sign-prefixed captions, phrase branch (n-gram convolutions) and symbol loss; 2: plain captions")
    negative_all_rank: bool = field(True, "draw the matching negatives from every rank's batch (published)")

    def validate(self) -> None:
        super().validate()
        if self.text.cross_attention != "all":
            raise ValueError("the BLIP text encoder cross-attends in every layer: set model.text.cross_attention "
                             "to 'all'")
