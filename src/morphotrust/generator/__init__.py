"""The conditional generator stage: `morphotrust generator <command> ...`.

- autoencoder: images <-> latents for the flow model (autoencoder.py)
- train, sample: the SiT-style conditional flow model (model.py, train.py, sample.py)
- translator, generation-trust: during-generation trust scoring (translator.py, generation_trust.py)
- standins, external: demo stand-ins and images from other generators (standins.py, external.py; their file
  formats and layouts: formats.py, layouts.py)
- peer-copies: real held-out sites written in another generator's format, the known-answer check of external

Sub-modules are imported only when their command runs, so `standins` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv)
COMMANDS = {
    "autoencoder": ("autoencoder", "cli"),
    "train": ("train", "cli"),
    "export-weights": ("init_weights", "cli"),
    "sample": ("sample", "cli"),
    "translator": ("generation_trust", "translator_cli"),
    "generation-trust": ("generation_trust", "cli"),
    "standins": ("standins", "cli"),
    "external": ("external", "cli"),
    "peer-copies": ("peer_copies", "cli"),
}


def cli(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: morphotrust generator {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module, function = COMMANDS[argv[0]]
    getattr(importlib.import_module(f"{__name__}.{module}"), function)(argv[1:])
