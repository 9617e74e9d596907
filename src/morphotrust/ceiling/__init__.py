"""Ceiling stage: the autoencoder's held-out reconstructions scored like generations (`stage.py`), the best any
generator on its latents can reach. Command line: `cli.py`; rules: workflow/rules/ceiling.smk."""

from .stage import ARMS, arm_figures, ceiling_stage

__all__ = ["ARMS", "arm_figures", "ceiling_stage"]
