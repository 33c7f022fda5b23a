"""Procedural synthetic data in the real file formats (FashionGen HDF5, FashionIQ folder, ASEN++ split files).

Command line: ``python -m datasets.synthetic {fashiongen,fashioniq,asen,all} --out data/synthetic``.
"""

from .asen import generate_asen
from .fashiongen import generate_fashiongen
from .fashioniq import generate_fashioniq
from .garment import COLOURS, PALETTE, PATTERNS, GarmentSpec, change_attributes, sample_spec
from .render import Pose, random_pose, render

KINDS = ("fashiongen", "fashioniq", "asen")

__all__ = [
    "COLOURS",
    "KINDS",
    "PALETTE",
    "PATTERNS",
    "GarmentSpec",
    "Pose",
    "change_attributes",
    "generate_asen",
    "generate_fashiongen",
    "generate_fashioniq",
    "random_pose",
    "render",
    "sample_spec",
]
