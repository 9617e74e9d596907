"""Generator throughput: training images/s, sampling images/s, and pure forward-pass images/s of the same model
in the same run (the limit the sampler's overhead is measured against).

    .venv/bin/python benchmarks/bench_generator.py                      # tiny preset, CPU, config defaults
    .venv/bin/python benchmarks/bench_generator.py --presets S/2 B/2 --resolution 128 --device cuda
    .venv/bin/python benchmarks/bench_generator.py --presets S/2 B/2 --resolution 256 --device cuda \
        --latent-channels 24 --downsample 8 --sampling-steps 250      # on SD-VAE latents (the paper's setting)

With --downsample f the model runs on (latent channels, resolution / f, resolution / f) latents, the flow model's
cost only (the autoencoder's encode / decode are not timed).

Sampling cost per image = sampling_steps x (2 for Heun) x (2 with guidance) model evaluations, so the ideal
sampling rate is forward_rate / that factor; `sampler_efficiency` = measured / ideal (1.0 = no overhead).
Random data stands in for images (throughput does not depend on content). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml

from morphotrust.generator.model import build_network, interpolate, model_config
from morphotrust.generator.sample import integrate
from morphotrust.generator.runtime import autocast, resolve_device

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"cell_type": 4, "sirna_id": 1139}  # RxRx1's sizes


def timed(fn, device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def bench(preset: str, resolution: int, device, batch: int, sample_batch: int, cfg: dict, repeats: int,
          channels: int = 6, downsample: int = 1) -> dict:
    torch.manual_seed(0)
    image_resolution, resolution = resolution, resolution // downsample
    model = build_network(model_config(preset, resolution, VOCAB, channels=channels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, resolution, resolution, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def train_step():
        t = torch.rand(batch, device=device)
        x_t, v = interpolate(x, torch.randn_like(x), t)
        with autocast(device, cfg["precision"]):
            loss = torch.nn.functional.mse_loss(model(x_t, t, labels, labels).float(), v)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train_s = timed(train_step, device, repeats)
    model.eval()
    guided = cfg["guidance_scale"] != 1.0
    evaluations = cfg["sampling_steps"] * (2 if cfg["sampler"] == "heun" else 1)
    forward_batch = sample_batch * (2 if guided else 1)  # the batch the model sees inside the sampler
    xf = torch.randn(forward_batch, channels, resolution, resolution, device=device)
    lf = torch.zeros(forward_batch, dtype=torch.long, device=device)
    tf = torch.rand(forward_batch, device=device)

    @torch.no_grad()
    def forward():
        with autocast(device, cfg["precision"]):
            model(xf, tf, lf, lf)

    forward_s = timed(forward, device, repeats)
    noise = torch.randn(sample_batch, channels, resolution, resolution)
    ls = torch.zeros(sample_batch, dtype=torch.long)

    def sample():
        integrate(model, noise, ls, ls, steps=cfg["sampling_steps"], method=cfg["sampler"],
                  guidance=cfg["guidance_scale"], precision=cfg["precision"])

    sample_s = timed(sample, device, max(1, repeats // 3))
    forward_rate = forward_batch / forward_s
    ideal = forward_rate / (evaluations * (2 if guided else 1))
    sampling_rate = sample_batch / sample_s
    return dict(preset=preset, resolution=image_resolution, latent=f"{channels}x{resolution}x{resolution}",
                device=device_name(device),
                parameters_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                train_batch=batch, train_images_per_s=round(batch / train_s, 2),
                forward_batch=forward_batch, forward_images_per_s=round(forward_rate, 2),
                sampler=cfg["sampler"], sampling_steps=cfg["sampling_steps"], guidance_scale=cfg["guidance_scale"],
                sample_batch=sample_batch, sampling_images_per_s=round(sampling_rate, 3),
                ideal_sampling_images_per_s=round(ideal, 3), sampler_efficiency=round(sampling_rate / ideal, 3))


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"


def main():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["generator"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=cfg["batch_size"], help="training batch")
    parser.add_argument("--sample-batch", type=int, default=16, help="samples integrated together")
    parser.add_argument("--sampler", default=cfg["sampler"])
    parser.add_argument("--sampling-steps", type=int, default=cfg["sampling_steps"])
    parser.add_argument("--guidance-scale", type=float, default=cfg["guidance_scale"])
    parser.add_argument("--precision", default="auto", help="auto (bf16 on a GPU) | bf16 | fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--latent-channels", type=int, default=6, help="6 = pixels; SD-VAE folded: 24")
    parser.add_argument("--downsample", type=int, default=1, help="autoencoder downsampling (1 = pixels, SD-VAE 8)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    run_cfg = dict(sampler=args.sampler, sampling_steps=args.sampling_steps, guidance_scale=args.guidance_scale,
                   precision=args.precision)
    rows = [bench(p, args.resolution, device, args.batch_size, args.sample_batch, run_cfg, args.repeats,
                  args.latent_channels, args.downsample) for p in args.presets]
    columns = ["preset", "resolution", "latent", "device", "parameters_M", "train_images_per_s", "forward_images_per_s",
               "sampling_images_per_s", "ideal_sampling_images_per_s", "sampler_efficiency"]
    print(f"sampler {args.sampler}, {args.sampling_steps} steps, guidance {args.guidance_scale}; "
          f"train batch {args.batch_size}, sample batch {args.sample_batch}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
