"""Sizes of the generator presets: tokens, parameters and forward GFLOPs per image, in pixel space and on
latents, at several image resolutions (the table in docs/design.md).

    .venv/bin/python benchmarks/generator_sizes.py                       # the docs table
    .venv/bin/python benchmarks/generator_sizes.py --resolutions 64 256 --json sizes.json

FLOPs are counted by torch.utils.flop_counter on the meta device (no weights are allocated, nothing runs), for
one conditional forward pass of one image (a matmul of m x k by k x n counts 2 m k n). Sampling costs
sampling_steps x (2 with guidance) x (2 for Heun) of these; a training step about 3 of them per image.
Spaces: pixels (6 channels, f = 1), trained (the default trained autoencoder: 8 channels, f = 2) and
sd-vae (the paper's folding: 6 x 4 = 24 channels, f = 8). For the U-Net (unet), which has no tokens, the
tokens column gives the positions of its input (latent side squared).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from morphotrust.generator.model import build_network, model_config
from morphotrust.generator.presets import PRESETS

VOCAB = {"cell_type": 4, "sirna_id": 1139}  # RxRx1's sizes
SPACES = {"pixels": (6, 1), "trained": (8, 2), "sd-vae": (24, 8)}  # name -> (channels, downsampling)


def size(preset: str, space: str, resolution: int) -> dict | None:
    channels, downsample = SPACES[space]
    side = resolution // downsample
    if side % PRESETS[preset]["patch"]:
        return None
    with torch.device("meta"):
        model = build_network(model_config(preset, side, VOCAB, channels=channels))
        x = torch.empty(1, channels, side, side)
        t, label = torch.empty(1), torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t, label, label)
    return dict(preset=preset, space=space, resolution=resolution, latent=f"{channels}x{side}x{side}",
                tokens=side * side // PRESETS[preset].get("patch", 1) ** 2 if PRESETS[preset]["architecture"] == "sit"
                else side * side, parameters_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                forward_GFLOPs=round(counter.get_total_flops() / 1e9, 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = [r for p in args.presets for s in args.spaces for res in args.resolutions
            if (r := size(p, s, res)) is not None]
    print("| preset | space | parameters (M) | " + " | ".join(f"{r} px: tokens / GFLOPs" for r in args.resolutions)
          + " |")
    print("|---|---|---|" + "---|" * len(args.resolutions))
    for p in args.presets:
        for s in args.spaces:
            cells = {r["resolution"]: r for r in rows if r["preset"] == p and r["space"] == s}
            if not cells:
                continue
            params = next(iter(cells.values()))["parameters_M"]
            print(f"| {p} | {s} | {params} | " + " | ".join(
                f"{cells[res]['tokens']} / {cells[res]['forward_GFLOPs']}" if res in cells else "-"
                for res in args.resolutions) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
