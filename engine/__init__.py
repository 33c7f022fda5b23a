"""Shared training machinery: configs, distribution, data loading, optimisation, checkpoints, logging, loop."""
