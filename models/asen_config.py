"""The ASEN++ model's config: the MODEL section of an ASEN++ run (trunks, attention heads, branch sizes).

Field names are the published upper-case keys so the published YAML files load unchanged; the defaults are
the published defaults. The run-level sections live in tasks/asen_schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import field

BackboneName = Literal["resnet50", "resnet34", "resnet18"]


@dataclass
class BackboneConfig:
    """A torchvision-layout ResNet truncated after layer3."""

    NAME: BackboneName = field("resnet50", "trunk architecture (timm, no pretrained download)")
    EMBED_SIZE: int = field(1024, "channels C of the trunk's layer3 output (1024 for resnet50, 256 for 18/34)")
    WEIGHTS: str = field("", "local torchvision ImageNet state dict (layer4/fc ignored); empty = random init")


@dataclass
class LocalBackboneConfig(BackboneConfig):
    NAME: BackboneName = field("resnet34", "trunk architecture (timm, no pretrained download)")
    EMBED_SIZE: int = field(256, "channels C of the trunk's layer3 output")


@dataclass
class SpatialConfig:
    """Attribute-aware spatial attention (ASA)."""

    ENABLE: bool = field(True, "ASA on; off = global average pooling and no attention map")
    COMMON_EMBED_SIZE: int = field(512, "d, width of the attribute query and projected feature map")


@dataclass
class LocalSpatialConfig(SpatialConfig):
    COMMON_EMBED_SIZE: int = field(256, "d, width of the attribute query and projected feature map")


@dataclass
class ChannelConfig:
    """Attribute-aware channel attention (ACA)."""

    ENABLE: bool = field(True, "ACA on; off = the pooled feature is used as is")
    REDUCTION_RATE: int = field(2, "r, the channel MLP's hidden width is C / r")


@dataclass
class AttentionConfig:
    SPATIAL: SpatialConfig = field(SpatialConfig, "spatial attention")
    CHANNEL: ChannelConfig = field(ChannelConfig, "channel attention")


@dataclass
class LocalAttentionConfig(AttentionConfig):
    SPATIAL: LocalSpatialConfig = field(LocalSpatialConfig, "spatial attention")


@dataclass
class GlobalBranchConfig:
    """Whole image -> ResNet-50 trunk -> attention head."""

    BACKBONE: BackboneConfig = field(BackboneConfig, "global trunk")
    ATTENTION: AttentionConfig = field(AttentionConfig, "global attention head")


@dataclass
class LocalBranchConfig:
    """Attention-guided crop -> ResNet-34 trunk -> its own attention head (stage 2)."""

    ENABLE: bool = field(False, "build and use the local branch (stage 2)")
    BACKBONE: LocalBackboneConfig = field(LocalBackboneConfig, "local trunk")
    ATTENTION: LocalAttentionConfig = field(LocalAttentionConfig, "local attention head")


@dataclass
class AttributeConfig:
    EMBED_SIZE: int = field(512, "width of the shared attribute table")


@dataclass
class AsenModelConfig:
    """MODEL: the shared attribute table and the two branches."""

    EMBED_SIZE: int = field(1024, "D, output size of both branches")
    ATTRIBUTE: AttributeConfig = field(AttributeConfig, "attribute embedding")
    GLOBAL: GlobalBranchConfig = field(GlobalBranchConfig, "global branch")
    LOCAL: LocalBranchConfig = field(LocalBranchConfig, "local branch")
    BN_PER_TRIPLET_PART: bool = field(
        True, "separate forwards for anchors, positives, negatives (published BN statistics); "
        "false = one forward of all 3B images (faster, different BN statistics)")

    def validate(self) -> None:
        if self.LOCAL.ENABLE and not self.GLOBAL.ATTENTION.SPATIAL.ENABLE:
            raise ValueError("MODEL.LOCAL.ENABLE needs the global spatial attention (its map chooses the crop)")
