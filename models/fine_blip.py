"""Fashion-FINE on BLIP: the retrieval model of both training stages.

BLIP's ViT-B/16 (384 px, activation checkpointing on the last blocks) and MED BERT (cross-attention in
every layer, skipped in text mode), one projection per modality, momentum encoders, feature queues with an
id queue, id-aware focal contrastive loss with momentum distillation, and image-text matching whose hard
negatives are drawn from every rank's batch. The FINE pieces (attention pooling, global/local mixing,
phrase n-grams, symbol feature, focal loss) are those of the ALBEF variant (`FineDualEncoder`).
"""

from __future__ import annotations

import torch

from engine import distributed as du
from models.blip_config import BlipModelConfig
from models.fine_config import FineBehaviour, LossConfig
from models.fine_dual_encoder import FineDualEncoder
from models.fine_local import make_ngram_convs
from models.losses import matching_loss, sample_hard_negatives, symbol_loss
from models.momentum import random_unit_queue


def loss_names(stage: int) -> tuple[str, ...]:
    return ("itc", "itm", "symbol") if stage == 1 else ("itc", "itm")


class FineBlipRetrieval(FineDualEncoder):
    """`forward(batch, ctx)` returns `{itc, itm}` (+ `symbol` in stage 1); `encode_image` / `encode_text`
    give the ranking embeddings. Attribute names are the published state-dict names.

    Text layout: `[CLS] (sign) words [SEP] [PAD]...`. Stage 1 texts carry the sign at position 1 and pool
    words from position 2; stage 2 texts have no sign and pool from position 1.
    """

    def __init__(self, cfg: BlipModelConfig, loss: LossConfig, behaviour: FineBehaviour, vocab_size: int,
                 sep_token_id: int, enc_token_id: int) -> None:
        super().__init__(cfg, loss, behaviour, vocab_size, sep_token_id, combine_proj=False, text_queue=False)
        self.stage, self.enc_token_id = cfg.stage, enc_token_id
        embed, size = cfg.embed_dim, cfg.queue_size
        self.register_buffer("image_queue", random_unit_queue(embed, size))
        self.register_buffer("text_queue", random_unit_queue(embed, size))
        self.register_buffer("idx_queue", torch.full((1, size), -100, dtype=torch.long))
        self.register_buffer("ptr_queue", torch.zeros(1, dtype=torch.long))
        if cfg.stage == 1:
            self.unigram_conv, self.bigram_conv, self.trigram_conv = make_ngram_convs(cfg.text.hidden)

    def queue_pointer(self) -> torch.Tensor:
        return self.ptr_queue

    def word_range(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   has_sign: bool) -> tuple[int, torch.Tensor | None]:
        """Words start right after `[CLS]` (and the sign when the text has one), as in both published
        stages. compat (`compat.local_pool_mask`, docs/compat.md): every later position counts, padding
        included; fixed: padding and `[SEP]` masked.
        """
        start = 2 if has_sign else 1
        if self.behaviour.pool_padding:
            return start, None
        ids, mask = input_ids[:, start:], attention_mask[:, start:]
        return start, mask.bool() & (ids != self.sep_token_id)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    has_sign: bool = False) -> torch.Tensor:
        """Evaluation embedding of texts. compat (`blip_eval_pool_range`): the shared published scoring
        function pools from position 1 even when it holds the sign; fixed: after the sign, as in training."""
        if self.behaviour.eval_pool_from_1:
            has_sign = False
        return super().encode_text(input_ids, attention_mask, has_sign)

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        ids, mask, idx = batch["input_ids"], batch["attention_mask"], batch["product_idx"]
        out = self.aligned_pass(batch, ctx, has_sign=self.stage == 1, id_targets=True)
        losses = {"itc": out.itc}
        if self.stage == 1:
            losses["symbol"] = symbol_loss(self.symbol_feature(out.hidden, ids, mask), out.img_feat)
        losses["itm"] = self.image_text_matching(ids, mask, out.image_tokens, out.img_feat, out.txt_feat, idx)
        return losses

    def image_text_matching(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            image_tokens: torch.Tensor, img_feat: torch.Tensor, txt_feat: torch.Tensor,
                            idx: torch.Tensor) -> torch.Tensor:
        """BLIP ITM: multimodal passes with `[ENC]` in place of `[CLS]` over the positive pairs and one hard
        negative per image and per text. Negatives are drawn from the mixed online features of every rank's
        batch (`negative_all_rank`) with every same-id pair excluded; the negative images keep their
        gradient path to the rank that encoded them."""
        b = input_ids.shape[0]
        enc_ids = input_ids.clone()
        enc_ids[:, 0] = self.enc_token_id
        gather = self.cfg.negative_all_rank and du.is_dist()
        with torch.no_grad():
            idx_all = du.all_gather_nograd(idx) if gather else idx
            img_all = du.all_gather_nograd(img_feat) if gather else img_feat
            txt_all = du.all_gather_nograd(txt_feat) if gather else txt_feat
            same = idx.view(-1, 1) == idx_all.view(1, -1)
            offset = du.get_rank() * b if gather else 0
            neg_image = sample_hard_negatives(txt_feat @ img_all.T / self.temp, same, offset)  # per text
            neg_text = sample_hard_negatives(img_feat @ txt_all.T / self.temp, same, offset)  # per image
        image_all = du.all_gather_with_grad(image_tokens) if gather else image_tokens
        ids_all = du.all_gather_nograd(enc_ids) if gather else enc_ids
        mask_all = du.all_gather_nograd(attention_mask) if gather else attention_mask
        pos = self.text_encoder.multimodal(enc_ids, attention_mask, image_tokens)[:, 0]
        neg = self.text_encoder.multimodal(torch.cat([enc_ids, ids_all[neg_text]]),
                                           torch.cat([attention_mask, mask_all[neg_text]]),
                                           torch.cat([image_all[neg_image], image_tokens]))[:, 0]
        return matching_loss(self.itm_head(torch.cat([pos, neg])), b)
