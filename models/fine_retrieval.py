"""Fashion-FINE cross-modal retrieval (CMR) fine-tuning model (fine-model.md §3)."""

from __future__ import annotations

import torch

from models.fine_base import FineDualEncoder
from models.fine_config import CompatConfig, FineModelConfig, LossConfig
from models.losses import diagonal_targets, positive_targets

LOSS_NAMES = ("itc", "itm")


class FineRetrievalModel(FineDualEncoder):
    """`forward(batch, ctx)` returns `{itc, itm}`; `encode_image`/`encode_text` give the ranking embeddings.

    Contrastive targets: product-id aware over batch and queue (fixed, with an `idx_queue` buffer), or
    the published diagonal targets with a label-less queue (`compat.retrieval_id_targets: compat`, D8).
    """

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, compat: CompatConfig, vocab_size: int,
                 sep_token_id: int) -> None:
        super().__init__(cfg, loss, compat, vocab_size, sep_token_id)
        self.id_targets = not compat.is_compat("retrieval_id_targets")
        if self.id_targets:
            self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        image, ids, mask, idx = batch["image"], batch["input_ids"], batch["attention_mask"], batch["product_idx"]
        self.clamp_temp()
        image_tokens = self.visual_encoder(image)
        hidden = self.text_encoder.text(ids, mask)
        img_feat = self.image_feature(image_tokens)
        txt_feat = self.text_feature(hidden, ids, mask, has_sign=False)
        with torch.no_grad():
            self.update_momentum()
            img_m, txt_m = self.momentum_features(image, ids, mask)
            columns = img_m.shape[0] + self.image_queue.shape[1]
            if self.id_targets:
                targets = positive_targets(idx, torch.cat([idx.view(1, -1), self.idx_queue.clone()], dim=1))
            else:
                targets = diagonal_targets(img_m.shape[0], columns, img_m.device)
        itc, sim_i2t, sim_t2i = self.contrastive_loss(img_feat, txt_feat, img_m, txt_m, targets,
                                                      self.distill_alpha(ctx))
        self.enqueue_features(img_m, txt_m, idx if self.id_targets else None)
        _, itm = self.image_text_matching(hidden, mask, image_tokens, sim_i2t, sim_t2i, idx)
        return {"itc": itc, "itm": itm}
