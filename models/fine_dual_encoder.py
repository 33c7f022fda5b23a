"""The dual encoder shared by the Fashion-FINE pretraining and retrieval models: encoders, projections,
momentum copies, queues, global/local features and the focal contrastive loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed as du
from models.bert import BertModel
from models.fine_config import FineBehaviour, FineModelConfig, LossConfig
from models.fine_local import attention_pool, init_attention_pool, mix, phrase_feature
from models.losses import (
    diagonal_targets,
    distilled_targets,
    focal_soft_cross_entropy,
    matching_loss,
    positive_targets,
    sample_hard_negatives,
)
from models.momentum import add_momentum_copies, momentum_update, random_unit_queue, write_queue
from models.vit import VisionEncoder

MOMENTUM_MODULES = ["visual_encoder", "vision_proj", "combine_vision_proj",
                    "text_encoder", "text_proj", "combine_text_proj"]
COMBINE_MODULES = ("combine_vision_proj", "combine_text_proj")


@dataclass
class AlignedPass:
    """What the contrastive step of a training forward leaves for the other losses."""

    image_tokens: torch.Tensor
    hidden: torch.Tensor
    img_feat: torch.Tensor
    txt_feat: torch.Tensor
    itc: torch.Tensor
    sim_i2t: torch.Tensor
    sim_t2i: torch.Tensor


class FineDualEncoder(nn.Module):
    """ViT + BERT with projections, attention pooling, momentum encoders and feature queues.

    Attribute names are the published state-dict names. The ALBEF variant projects in two stages
    (`*_proj` then `combine_*_proj`); the BLIP variant (`combine_proj=False`) has the first stage only.
    """

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, behaviour: FineBehaviour, vocab_size: int,
                 sep_token_id: int, *, itm_head: bool = True, local_pooling: bool = True,
                 text_queue: bool = True, combine_proj: bool = True) -> None:
        super().__init__()
        self.cfg, self.loss_cfg, self.behaviour = cfg, loss, behaviour
        self.sep_token_id = sep_token_id
        self.combine_proj = combine_proj
        width, embed = cfg.vision.width, cfg.embed_dim
        self.visual_encoder = VisionEncoder(cfg.vision)
        self.text_encoder = BertModel(vocab_size, cfg.text, image_width=width)
        self.vision_proj = nn.Linear(width, embed)
        self.text_proj = nn.Linear(cfg.text.hidden, embed)
        if combine_proj:
            self.combine_vision_proj = nn.Linear(embed, embed)
            self.combine_text_proj = nn.Linear(embed, embed)
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))
        if itm_head:
            self.itm_head = nn.Linear(cfg.text.hidden, 2)
        if local_pooling:
            self.W_v, self.att_layer_v = init_attention_pool(width)
        momentum_modules = [m for m in MOMENTUM_MODULES if combine_proj or m not in COMBINE_MODULES]
        self.momentum_pairs = add_momentum_copies(self, momentum_modules)
        if text_queue:  # the TGIR model keeps an image queue and a fused-query queue instead
            self.register_buffer("image_queue", random_unit_queue(embed, cfg.queue_size))
            self.register_buffer("text_queue", random_unit_queue(embed, cfg.queue_size))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------------ features
    def project_image(self, x: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """`norm(combine_vision_proj(vision_proj(x)))` (or the momentum pair; BLIP: `norm(vision_proj(x))`)."""
        x = (self.vision_proj_m if momentum else self.vision_proj)(x)
        if self.combine_proj:
            x = (self.combine_vision_proj_m if momentum else self.combine_vision_proj)(x)
        return F.normalize(x.float(), dim=-1)

    def project_text(self, x: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """`norm(combine_text_proj(text_proj(x)))` (or the momentum pair; BLIP: `norm(text_proj(x))`)."""
        x = (self.text_proj_m if momentum else self.text_proj)(x)
        if self.combine_proj:
            x = (self.combine_text_proj_m if momentum else self.combine_text_proj)(x)
        return F.normalize(x.float(), dim=-1)

    def word_range(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   has_sign: bool) -> tuple[int, torch.Tensor | None]:
        """First word position and the word mask for local pooling.

        compat (`compat.text_layout`, `compat.local_pool_mask`; docs/compat.md): words from position 2
        whatever the text, every position counts.
        fixed: right after `[CLS]` (and the sign when present); padding and `[SEP]` masked.
        """
        if self.behaviour.words_from_2:
            start = 2
        else:
            start = 2 if has_sign else 1
        if self.behaviour.pool_padding:
            return start, None
        ids, mask = input_ids[:, start:], attention_mask[:, start:]
        return start, mask.bool() & (ids != self.sep_token_id)

    def image_feature(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mixed global/local image feature from ViT tokens `(B, 1 + P, D)`."""
        global_feat = self.project_image(tokens[:, 0])
        local_feat = self.project_image(attention_pool(tokens[:, 1:], self.W_v, self.att_layer_v))
        return mix(global_feat, local_feat, self.cfg.mix.img_local_ratio)

    def text_feature(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     has_sign: bool) -> torch.Tensor:
        """Mixed global/local text feature from text-mode BERT states `(B, T, D)`."""
        start, word_mask = self.word_range(input_ids, attention_mask, has_sign)
        global_feat = self.project_text(hidden[:, 0])
        local_feat = self.project_text(attention_pool(hidden[:, start:], self.W_v, self.att_layer_v, word_mask))
        return mix(global_feat, local_feat, self.cfg.mix.txt_local_ratio)

    def symbol_feature(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """`norm((1 - r) * f_sign + r * f_phrase)`: the projected state at the sign position 1 mixed
        with the n-gram phrase feature of the words after it. Needs the three n-gram convolutions
        (`unigram_conv`, `bigram_conv`, `trigram_conv`) of the models that have the phrase branch."""
        start, word_mask = self.word_range(input_ids, attention_mask, has_sign=True)
        sign = self.project_text(hidden[:, 1])
        convs = (self.unigram_conv, self.bigram_conv, self.trigram_conv)
        phrase = self.project_text(phrase_feature(hidden[:, start:], convs, word_mask))
        r = self.cfg.symbol_phrase_ratio
        return F.normalize((1.0 - r) * sign + r * phrase, dim=-1)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Evaluation embedding of images (unit vectors, fp32)."""
        return self.image_feature(self.visual_encoder(image))

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, has_sign: bool = False) -> torch.Tensor:
        """Evaluation embedding of texts (unit vectors, fp32)."""
        hidden = self.text_encoder.text(input_ids, attention_mask)
        return self.text_feature(hidden, input_ids, attention_mask, has_sign)

    @torch.no_grad()
    def encode_image_tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_image` and the ViT tokens `(B, 1 + P, D)` it pooled (what `itm_scores` cross-attends to)."""
        tokens = self.visual_encoder(image)
        return self.image_feature(tokens), tokens

    @torch.no_grad()
    def encode_text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           has_sign: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_text` and the text-mode BERT states `(B, T, D)` it pooled (what `itm_scores` fuses)."""
        hidden = self.text_encoder.text(input_ids, attention_mask)
        return self.text_feature(hidden, input_ids, attention_mask, has_sign), hidden

    @torch.no_grad()
    def itm_scores(self, image_tokens: torch.Tensor, text_states: torch.Tensor,
                   text_mask: torch.Tensor) -> torch.Tensor:
        """(B,) fp32 match logit (ITM head, class 1) of pair i = text states i with image tokens i: the fusion
        layers and head of training (`matching_logits`) on cached states, so each image and text is encoded once."""
        return self.matching_logits(text_states, text_mask, image_tokens)[1][:, 1].float()

    @torch.no_grad()
    def momentum_features(self, image: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum image/text features: global CLS only (published), mixed with `momentum_local_mix` (an
        ablation)."""
        image_tokens = self.visual_encoder_m(image)
        hidden = self.text_encoder_m.text(input_ids, attention_mask)
        img = self.project_image(image_tokens[:, 0], momentum=True)
        txt = self.project_text(hidden[:, 0], momentum=True)
        if self.behaviour.momentum_local_mix:
            img = mix(img, self.project_image(attention_pool(image_tokens[:, 1:], self.W_v, self.att_layer_v),
                                              momentum=True), self.cfg.mix.img_local_ratio)
            txt = mix(txt, self.project_text(attention_pool(hidden[:, 1:], self.W_v, self.att_layer_v,
                                                            attention_mask[:, 1:]), momentum=True),
                      self.cfg.mix.txt_local_ratio)
        return img, txt

    # ------------------------------------------------------------------ training helpers
    @torch.no_grad()
    def clamp_temp(self) -> None:
        self.temp.clamp_(0.001, 0.5)

    def distill_alpha(self, ctx) -> float:
        """Distillation weight, ramped linearly over epoch 0 when `distill_warmup` is on."""
        alpha = self.loss_cfg.distill_alpha
        if self.loss_cfg.distill_warmup and ctx is not None and ctx.epoch == 0:
            alpha *= min(1.0, ctx.epoch_fraction)
        return alpha

    @torch.no_grad()
    def update_momentum(self) -> None:
        momentum_update(self.momentum_pairs, self.cfg.momentum)

    def contrastive_loss(self, img_feat: torch.Tensor, txt_feat: torch.Tensor, img_m: torch.Tensor,
                         txt_m: torch.Tensor, targets: torch.Tensor,
                         alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Focal ITC with momentum distillation against `[batch momentum features | queue]`.

        Returns the loss and the online similarity matrices (i2t, t2i) of shape `(B, B + Q)`.
        """
        temp = self.temp
        with torch.no_grad():
            img_bank = torch.cat([img_m.T, self.image_queue.clone()], dim=1)
            txt_bank = torch.cat([txt_m.T, self.text_queue.clone()], dim=1)
            q_i2t = distilled_targets(img_m @ txt_bank / temp, targets, alpha)
            q_t2i = distilled_targets(txt_m @ img_bank / temp, targets, alpha)
        sim_i2t = img_feat @ txt_bank / temp
        sim_t2i = txt_feat @ img_bank / temp
        focal = self.loss_cfg.focal
        loss = (focal_soft_cross_entropy(sim_i2t, q_i2t, focal.alpha, focal.gamma)
                + focal_soft_cross_entropy(sim_t2i, q_t2i, focal.alpha, focal.gamma)) / 2
        return loss, sim_i2t, sim_t2i

    def aligned_pass(self, batch: dict[str, torch.Tensor], ctx, *, has_sign: bool, id_targets: bool) -> AlignedPass:
        """Encoders, mixed features, momentum update and features, focal ITC, enqueue.

        `id_targets`: positives are every batch/queue column of the same product (needs an `idx_queue`);
        otherwise the published one-hot diagonal with a label-less queue.
        """
        image, ids, mask, idx = batch["image"], batch["input_ids"], batch["attention_mask"], batch["product_idx"]
        self.clamp_temp()
        image_tokens = self.visual_encoder(image)
        hidden = self.text_encoder.text(ids, mask)
        img_feat = self.image_feature(image_tokens)
        txt_feat = self.text_feature(hidden, ids, mask, has_sign=has_sign)
        with torch.no_grad():
            self.update_momentum()
            img_m, txt_m = self.momentum_features(image, ids, mask)
            if id_targets:
                targets = positive_targets(idx, torch.cat([idx.view(1, -1), self.idx_queue.clone()], dim=1))
            else:
                targets = diagonal_targets(img_m.shape[0], img_m.shape[0] + self.image_queue.shape[1], img_m.device)
        itc, sim_i2t, sim_t2i = self.contrastive_loss(img_feat, txt_feat, img_m, txt_m, targets,
                                                      self.distill_alpha(ctx))
        self.enqueue_features(img_m, txt_m, idx if id_targets else None)
        return AlignedPass(image_tokens, hidden, img_feat, txt_feat, itc, sim_i2t, sim_t2i)

    def queue_pointer(self) -> torch.Tensor:
        """The `(1,)` write position shared by the feature queues (`queue_ptr`; BLIP names it `ptr_queue`)."""
        return self.queue_ptr

    @torch.no_grad()
    def enqueue_features(self, img_m: torch.Tensor, txt_m: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Gather this step's momentum features (and labels) over ranks and write them into the queues."""
        pointer = self.queue_pointer()
        start = int(pointer.item())
        write_queue(self.image_queue, start, du.all_gather_nograd(img_m))
        nxt = write_queue(self.text_queue, start, du.all_gather_nograd(txt_m))
        if idx is not None:
            write_queue(self.idx_queue, start, du.all_gather_nograd(idx).view(-1, 1))
        pointer[0] = nxt

    def matching_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                        image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion states of the pairs and `itm_head` logits of their CLS."""
        fused = self.text_encoder.fusion(hidden, attention_mask, image_tokens)
        return fused, self.itm_head(fused[:, 0])

    def image_text_matching(self, hidden: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor,
                            sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                            idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM over the positive pairs and one hard negative per image and per text, drawn from the
        in-batch similarities; returns (positive fused states, loss)."""
        b = hidden.shape[0]
        with torch.no_grad():
            same = None if self.behaviour.itm_same_product_negatives else idx.view(-1, 1) == idx.view(1, -1)
            neg_image = sample_hard_negatives(sim_t2i[:, :b], same)  # a negative image for each text
            neg_text = sample_hard_negatives(sim_i2t[:, :b], same)  # a negative text for each image
        fused_pos, logits_pos = self.matching_logits(hidden, mask, image_tokens)
        _, logits_neg = self.matching_logits(torch.cat([hidden, hidden[neg_text]]),
                                             torch.cat([mask, mask[neg_text]]),
                                             torch.cat([image_tokens[neg_image], image_tokens]))
        return fused_pos, matching_loss(torch.cat([logits_pos, logits_neg]), b)
