"""Fashion-FINE pretraining model: focal ITC with distillation, symbol loss, ITM with hard negatives,
masked-LM and replaced-token detection."""

from __future__ import annotations

import torch

from models.bert import MLMHead, ReplacedTokenHead
from models.fine_config import FineBehaviour, FineModelConfig, LossConfig
from models.fine_dual_encoder import FineDualEncoder
from models.fine_local import make_ngram_convs
from models.losses import (
    symbol_loss,
    token_prediction_loss,
)

LOSS_NAMES = ("itc", "itm", "symbol", "mlm", "rtd")


class FinePretrainModel(FineDualEncoder):
    """`forward(batch, ctx)` returns the five named losses; `encode_image`/`encode_text` for evaluation."""

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, behaviour: FineBehaviour, vocab_size: int,
                 sep_token_id: int) -> None:
        super().__init__(cfg, loss, behaviour, vocab_size, sep_token_id)
        hidden = cfg.text.hidden
        self.unigram_conv, self.bigram_conv, self.trigram_conv = make_ngram_convs(hidden)
        self.decoder_layer = MLMHead(hidden, vocab_size)
        self.replace_predict_layer = ReplacedTokenHead(hidden, kinds=2)
        self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        ids, mask, idx = batch["input_ids"], batch["attention_mask"], batch["product_idx"]
        out = self.aligned_pass(batch, ctx, has_sign=True, id_targets=True)
        losses = {"itc": out.itc, "symbol": symbol_loss(self.symbol_feature(out.hidden, ids, mask), out.img_feat)}
        fused_pos, losses["itm"] = self.image_text_matching(out.hidden, mask, out.image_tokens, out.sim_i2t,
                                                             out.sim_t2i, idx)
        losses["mlm"] = token_prediction_loss(self.decoder_layer, fused_pos, batch["mlm_labels"])
        losses["rtd"] = token_prediction_loss(self.replace_predict_layer, fused_pos, batch["rtd_labels"])
        return losses

