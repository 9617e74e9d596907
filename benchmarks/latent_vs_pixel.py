"""Pixel vs latent generator on the demo at the same small budget: train, sample, and judge the seen-arm
generations with the trust score fitted by benchmarks/autoencoder_ceiling.py (same features and trust config).

    .venv/bin/python benchmarks/latent_vs_pixel.py --subsets results/subsets --scorer /tmp/ceiling/trust/scorer \\
        --out /tmp/latent_vs_pixel --run pixel:tiny --run latent:tiny/2:results/autoencoder/autoencoder.json

Each --run is `pixel:PRESET` or `latent:PRESET:AUTOENCODER_JSON`; training uses config `generator` with
--steps. Prints training seconds (1 thread), accepted fraction, median R and T of the seen-arm samples and the
condition correlation of the sampler's summary, and writes the sampler's grid.png per run under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from morphotrust.features import encoder_from_config, extract
from morphotrust.generator.sample import run_sampling
from morphotrust.generator.train import train
from morphotrust.images import read_site
from morphotrust.trust import TrustScorer

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", required=True)
    parser.add_argument("--scorer", required=True, help="prefix of scorer.npz/.json")
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config generator.steps)")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    subsets, out = Path(args.subsets), Path(args.out)
    resolution = int(np.load(subsets / "stacks" / "train.npy", mmap_mode="r").shape[-1])
    scorer = TrustScorer.load(args.scorer)
    encoder, batch = encoder_from_config(config["features"], 1)
    results = []
    for run in args.run:
        kind, preset, *rest = run.split(":")
        autoencoder = rest[0] if rest else None
        cfg = dict(config["generator"], preset=preset, num_workers=0, device="cpu",
                   autoencoder="none" if kind == "pixel" else json.loads(Path(autoencoder).read_text())["kind"])
        if args.steps:
            cfg["steps"] = args.steps
        name = run.replace(":", "_").replace("/", "-")[:60]
        start = time.perf_counter()
        train(subsets / "manifest.parquet", subsets / "stacks", out / name / "model", cfg, resolution,
              autoencoder=autoencoder)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        generated = run_sampling(subsets / "manifest.parquet", subsets / "stacks", out / name / "model" /
                                 "checkpoint.pt", out / name / "generated", cfg, autoencoder=autoencoder)
        sample_s = time.perf_counter() - start
        seen = generated[generated["Metadata_arm"] == "seen"].reset_index(drop=True)
        images = [read_site(p) for p in seen["Metadata_image_path"]]
        scores = scorer.score(extract(iter(images), len(images), encoder, batch),
                              {"cell_type": seen["Metadata_cell_type"].astype(str).to_numpy(),
                               "sirna_id": seen["Metadata_sirna_id"].astype(np.int64).to_numpy()})
        summary = json.loads((out / name / "generated" / "summary.json").read_text())
        results.append(dict(run=run, steps=cfg["steps"], train_s=round(train_s), sample_s=round(sample_s),
                            n_seen=len(seen), accepted_fraction=float(scorer.accept(scores).mean()),
                            median_R=float(scores["R"].median()), median_T=float(scores["T"].median()),
                            condition_mean_r=summary["condition_mean_r"],
                            grid=str(out / name / "generated" / "grid.png")))
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"trust threshold κ = {scorer.threshold_:.2f}")
    print("| run | steps | train s | sample s | seen samples | accepted | median R | median T | condition r |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['steps']} | {r['train_s']} | {r['sample_s']} | {r['n_seen']} | "
              f"{r['accepted_fraction']:.0%} | {r['median_R']:.1f} | {r['median_T']:.1f} | "
              f"{r['condition_mean_r']:.2f} |")


if __name__ == "__main__":
    main()
