"""Fashion-FINE text-guided image retrieval (TGIR) model on FashionIQ."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import distributed as du
from models.fine_config import FineBehaviour, FineModelConfig, LossConfig
from models.fine_dual_encoder import FineDualEncoder
from models.losses import diagonal_targets, distilled_targets, focal_soft_cross_entropy, positive_targets
from models.momentum import random_unit_queue, write_queue

LOSS_NAMES = ("itc",)


class FineTGIRModel(FineDualEncoder):
    """Query = fused (modification text, reference image) CLS; gallery = image CLS features.

    Targets over `[batch targets | batch references | image queue]`: the published one-hot on the own
    target, or (fixed, docs/compat.md: compat.retrieval_id_targets) every column showing the same target
    image, with label queues.
    """

    def __init__(self, cfg: FineModelConfig, loss: LossConfig, behaviour: FineBehaviour, vocab_size: int,
                 sep_token_id: int) -> None:
        super().__init__(cfg, loss, behaviour, vocab_size, sep_token_id, itm_head=False, local_pooling=False,
                         text_queue=False)
        embed, size = cfg.embed_dim, cfg.queue_size
        self.register_buffer("image_queue", random_unit_queue(embed, size))
        self.register_buffer("fusion_queue", random_unit_queue(embed, size))
        self.register_buffer("img_queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("fusion_queue_ptr", torch.zeros(1, dtype=torch.long))
        self.id_targets = not behaviour.diagonal_targets
        if self.id_targets:
            self.register_buffer("image_idx_queue", torch.full((1, size), -100, dtype=torch.long))
            self.register_buffer("fusion_idx_queue", torch.full((1, size), -100, dtype=torch.long))

    def query_feature(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      ref_tokens: torch.Tensor) -> torch.Tensor:
        """`norm(Pt(fusion CLS))` of the modification text attending to the reference image."""
        hidden = self.text_encoder.text(input_ids, attention_mask)
        fused = self.text_encoder.fusion(hidden, attention_mask, ref_tokens)
        return self.project_text(fused[:, 0])

    @torch.no_grad()
    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ref_image: torch.Tensor) -> torch.Tensor:
        return self.query_feature(input_ids, attention_mask, self.visual_encoder(ref_image))

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Gallery embedding: projected CLS only (no local pooling in TGIR)."""
        return self.project_image(self.visual_encoder(image)[:, 0])

    @torch.no_grad()
    def _momentum_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        ref_tokens_m: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder_m.text(input_ids, attention_mask)
        fused = self.text_encoder_m.fusion(hidden, attention_mask, ref_tokens_m)[:, 0]
        # compat.tgir_momentum_proj (docs/compat.md): the published code follows the momentum text_proj with
        # the ONLINE combine projection.
        combine = self.combine_text_proj if self.behaviour.tgir_online_combine_proj else self.combine_text_proj_m
        return F.normalize(combine(self.text_proj_m(fused)).float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor], ctx=None) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        ref, tar = batch["ref_image"], batch["target_image"]
        ref_id, tar_id = batch["ref_id"], batch["target_id"]
        self.clamp_temp()
        b = ref.shape[0]
        tokens = self.visual_encoder(torch.cat([ref, tar]))
        ref_tokens, tar_tokens = tokens[:b], tokens[b:]
        z_tar = self.project_image(tar_tokens[:, 0])
        z_q = self.query_feature(ids, mask, ref_tokens)
        with torch.no_grad():
            self.update_momentum()
            tokens_m = self.visual_encoder_m(torch.cat([ref, tar]))
            z_ref_m = self.project_image(tokens_m[:b, 0], momentum=True)
            z_tar_m = self.project_image(tokens_m[b:, 0], momentum=True)
            z_q_m = self._momentum_query(ids, mask, tokens_m[:b])
            img_bank = torch.cat([z_tar_m.T, z_ref_m.T, self.image_queue.clone()], dim=1)
            q_bank = torch.cat([z_q_m.T, self.fusion_queue.clone()], dim=1)
            if self.id_targets:
                y_q2i = positive_targets(tar_id, torch.cat([tar_id.view(1, -1), ref_id.view(1, -1),
                                                            self.image_idx_queue.clone()], dim=1))
                y_i2q = positive_targets(tar_id, torch.cat([tar_id.view(1, -1), self.fusion_idx_queue.clone()], dim=1))
            else:
                y_q2i = diagonal_targets(b, img_bank.shape[1], z_q.device)
                y_i2q = diagonal_targets(b, q_bank.shape[1], z_q.device)
            alpha = self.distill_alpha(ctx)
            q_q2i = distilled_targets(z_q_m @ img_bank / self.temp, y_q2i, alpha)
            q_i2q = distilled_targets(z_tar_m @ q_bank / self.temp, y_i2q, alpha)
        loss = (focal_soft_cross_entropy(z_q @ img_bank / self.temp, q_q2i)
                + focal_soft_cross_entropy(z_tar @ q_bank / self.temp, q_i2q)) / 2
        self._enqueue(z_ref_m, z_tar_m, z_q_m, ref_id, tar_id)
        return {"itc": loss}

    @torch.no_grad()
    def _enqueue(self, z_ref_m: torch.Tensor, z_tar_m: torch.Tensor, z_q_m: torch.Tensor, ref_id: torch.Tensor,
                 tar_id: torch.Tensor) -> None:
        """Image queue gets `[targets ; references]` (2N columns), the fusion queue the N queries."""
        images = du.all_gather_nograd(torch.cat([z_tar_m, z_ref_m]))
        queries = du.all_gather_nograd(z_q_m)
        img_start, q_start = int(self.img_queue_ptr.item()), int(self.fusion_queue_ptr.item())
        if self.id_targets:
            image_ids = du.all_gather_nograd(torch.cat([tar_id, ref_id])).view(-1, 1)
            write_queue(self.image_idx_queue, img_start, image_ids)
            write_queue(self.fusion_idx_queue, q_start, du.all_gather_nograd(tar_id).view(-1, 1))
        self.img_queue_ptr[0] = write_queue(self.image_queue, img_start, images)
        self.fusion_queue_ptr[0] = write_queue(self.fusion_queue, q_start, queries)
