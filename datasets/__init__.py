"""Data sets, transforms and text processing (FashionGen, FashionIQ, ASEN++ split files, synthetic data)."""
