"""Fashion-FINE pretraining model: focal ITC with distillation, symbol loss, ITM with hard negatives,
masked-LM and replaced-token detection (fine-model.md §1-§2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.bert import MLMHead, ReplacedTokenHead
from models.fine_base import FineDualEncoder
from models.fine_config import CompatConfig, FineModelConfig, LossConfig
from models.fine_local import make_ngram_convs, phrase_feature
from models.losses import (
    positive_targets,
    symbol_loss,
    token_prediction_loss,
)

LOSS_NAMES = ("itc", "itm", "symbol", "mlm", "rtd")


class FinePretrainModel(FineDualEncoder):
    """`forward(batch, ctx)` returns the five named losses; `encode_image`/`encode_text` for evaluation."""

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, compat: CompatConfig, vocab_size: int,
                 sep_token_id: int) -> None:
        super().__init__(cfg, loss, compat, vocab_size, sep_token_id)
        hidden = cfg.text.hidden
        self.unigram_conv, self.bigram_conv, self.trigram_conv = make_ngram_convs(hidden)
        self.decoder_layer = MLMHead(hidden, vocab_size)
        self.replace_predict_layer = ReplacedTokenHead(hidden, kinds=2)
        self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))

    def symbol_feature(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """`norm((1 - r) * f_sign + r * f_phrase)`: sign token state mixed with the n-gram phrase feature."""
        start, word_mask = self.word_range(input_ids, attention_mask, has_sign=True)
        sign = self.project_text(hidden[:, 1])
        convs = (self.unigram_conv, self.bigram_conv, self.trigram_conv)
        phrase = self.project_text(phrase_feature(hidden[:, start:], convs, word_mask))
        r = self.cfg.symbol_phrase_ratio
        return F.normalize((1.0 - r) * sign + r * phrase, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        image, ids, mask, idx = batch["image"], batch["input_ids"], batch["attention_mask"], batch["product_idx"]
        self.clamp_temp()
        image_tokens = self.visual_encoder(image)
        hidden = self.text_encoder.text(ids, mask)
        img_feat = self.image_feature(image_tokens)
        txt_feat = self.text_feature(hidden, ids, mask, has_sign=True)

        with torch.no_grad():
            self.update_momentum()
            img_m, txt_m = self.momentum_features(image, ids, mask)
            targets = positive_targets(idx, torch.cat([idx.view(1, -1), self.idx_queue.clone()], dim=1))
        itc, sim_i2t, sim_t2i = self.contrastive_loss(img_feat, txt_feat, img_m, txt_m, targets,
                                                      self.distill_alpha(ctx))
        self.enqueue_features(img_m, txt_m, idx)

        losses = {"itc": itc, "symbol": symbol_loss(self.symbol_feature(hidden, ids, mask), img_feat)}
        fused_pos, itm = self.image_text_matching(hidden, mask, image_tokens, sim_i2t, sim_t2i, idx)
        losses["itm"] = itm
        losses["mlm"] = token_prediction_loss(self.decoder_layer, fused_pos, batch["mlm_labels"])
        losses["rtd"] = token_prediction_loss(self.replace_predict_layer, fused_pos, batch["rtd_labels"])
        return losses


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (momentum copies excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
