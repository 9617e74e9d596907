"""Data-parallel training throughput (morphotrust.generator.distributed): one process with the global batch vs
W torchrun processes (gloo on CPU, nccl on a GPU) with global batch / W each, through the real train() on
synthetic subsets; plus the FLOPs of one training image of a preset, for estimates on other hardware.

    .venv/bin/python benchmarks/bench_ddp.py                                 # tiny, 64 px, CPU, 1 vs 2 processes
    .venv/bin/python benchmarks/bench_ddp.py --flops-preset B/2 --flops-latent 24 32   # + FLOPs of B/2 on 32x32x24

Images/s counts training images (global batch x steps) between the end of step `--warmup` and the last step,
i.e. without start-up, data encoding or the final checkpoint. Each process uses --threads torch threads.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def synthetic_subsets(root: Path, n: int, resolution: int, conditions: int = 8) -> Path:
    """n random training sites of `conditions` seen conditions in the subsets stage's layout."""
    rng = np.random.default_rng(0)
    rows = [dict(Metadata_site_id=f"s{i}", Metadata_cell_type=f"C{i % 2}", Metadata_sirna_id=i % conditions,
                 Metadata_sirna=f"s{i % conditions}", Metadata_condition=f"C{i % 2}:{i % conditions}",
                 Metadata_arm="seen", Metadata_split="train", Metadata_stack_index=i) for i in range(n)]
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    np.save(root / "stacks" / "train.npy", rng.integers(0, 255, (n, 6, resolution, resolution), dtype=np.uint8))
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def worker(args) -> None:
    """One training process (alone, or a torchrun worker): writes rank 0's step times to --times."""
    from morphotrust.generator.distributed import team_for
    from morphotrust.generator.train import train

    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["generator"]
    cfg.update(preset=args.preset, steps=args.steps, batch_size=args.per_process_batch, num_workers=0,
               checkpoint_every=10 ** 9, device=args.device)
    times = []
    with team_for(torch.device(args.device)) as (team, device):
        train(args.data / "manifest.parquet", args.data / "stacks", args.out, cfg, args.resolution, device,
              on_step=lambda step: times.append(time.perf_counter()), team=team)
        if team.is_main:
            args.times.write_text(json.dumps(times))


def run(processes: int, args, data: Path, tmp: Path) -> dict:
    times_file = tmp / f"times{processes}.json"
    out = Path(tempfile.mkdtemp(dir=tmp))  # a fresh folder: no checkpoint to resume from
    common = ["--worker", "--data", str(data), "--out", str(out), "--times", str(times_file),
              "--preset", args.preset, "--resolution", str(args.resolution), "--steps", str(args.steps),
              "--per-process-batch", str(args.global_batch // processes), "--threads", str(args.threads),
              "--device", args.device]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([*launcher, __file__, *common], check=True, env=env, stdout=subprocess.DEVNULL)
    times = json.loads(times_file.read_text())
    seconds = times[-1] - times[args.warmup - 1]
    return dict(processes=processes, per_process_batch=args.global_batch // processes,
                images_per_s=(len(times) - args.warmup) * args.global_batch / seconds,
                seconds_per_step=seconds / (len(times) - args.warmup))


def training_flops(preset: str, channels: int, side: int) -> float:
    """FLOPs of one training image (forward + backward = 3 x forward, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from morphotrust.generator.model import build_network, model_config

    model = build_network(model_config(preset, side, {"cell_type": 4, "sirna_id": 1139}, channels=channels))
    x = torch.randn(1, channels, side, side)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.rand(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    return 3.0 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--times", type=Path)
    parser.add_argument("--per-process-batch", type=int)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--flops-preset", default=None)
    parser.add_argument("--flops-latent", type=int, nargs=2, metavar=("CHANNELS", "SIDE"), default=(24, 32))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synthetic_subsets(tmp / "data", 256, args.resolution)
        print(f"{args.preset} at {args.resolution} px, global batch {args.global_batch}, {args.steps} steps, "
              f"{args.threads} thread(s) per process, {args.device}, {os.cpu_count()} CPUs\n")
        print("| processes | batch per process | images/s (best of repeats) | s per step |\n|---|---|---|---|")
        for processes in args.processes:
            best = max((run(processes, args, data, tmp) for _ in range(args.repeats)), key=lambda r: r["images_per_s"])
            print(f"| {processes} | {best['per_process_batch']} | {best['images_per_s']:.1f} | "
                  f"{best['seconds_per_step']:.3f} |", flush=True)
    if args.flops_preset:
        channels, side = args.flops_latent
        flops = training_flops(args.flops_preset, channels, side)
        print(f"\n{args.flops_preset} on {channels} x {side} x {side} latents: {flops / 1e9:.1f} GFLOP per training "
              "image (3 x forward)")


if __name__ == "__main__":
    main()
