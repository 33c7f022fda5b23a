"""Fashion-FINE cross-modal retrieval (CMR) fine-tuning model."""

from __future__ import annotations

import torch

from models.fine_config import FineBehaviour, FineModelConfig, LossConfig
from models.fine_dual_encoder import FineDualEncoder

LOSS_NAMES = ("itc", "itm")


class FineRetrievalModel(FineDualEncoder):
    """`forward(batch, ctx)` returns `{itc, itm}`; `encode_image`/`encode_text` give the ranking embeddings.

    Contrastive targets: product-id aware over batch and queue (fixed, with an `idx_queue` buffer), or
    the published diagonal targets with a label-less queue (`compat.retrieval_id_targets: compat`,
    docs/compat.md).
    """

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, behaviour: FineBehaviour, vocab_size: int,
                 sep_token_id: int) -> None:
        super().__init__(cfg, loss, behaviour, vocab_size, sep_token_id)
        self.id_targets = not behaviour.diagonal_targets
        if self.id_targets:
            self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        out = self.aligned_pass(batch, ctx, has_sign=False, id_targets=self.id_targets)
        _, itm = self.image_text_matching(out.hidden, batch["attention_mask"], out.image_tokens, out.sim_i2t,
                                          out.sim_t2i, batch["product_idx"])
        return {"itc": out.itc, "itm": itm}
