"""The ceiling of a latent generator: how the trust score judges autoencoder reconstructions of held-out real
sites (the best any generator on that latent space can do), beside the real sites themselves and blurred copies.

    .venv/bin/python benchmarks/autoencoder_ceiling.py --subsets results/subsets \\
        --autoencoders results/autoencoder/autoencoder.json [more.json ...] --out /tmp/ceiling

Fits the trust score exactly as the workflow does (morphotrust.trust.fit_stage on encoder features of the
real train and calibration splits, config `features` and `trust` sections), then scores the seen arm's
evaluation sites: as they are, blurred (Gaussian σ in px, the corruption the default features are known to
reject), and encoded -> decoded by each autoencoder. Reports per-stain PSNR and the accepted fraction
(T <= κ, each site with its own condition). Prints a Markdown table and writes ceiling.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from scipy.ndimage import gaussian_filter

from morphotrust.features import encoder_from_config, extract, write_features
from morphotrust.generator.autoencoder import load_codec, psnr_per_stain
from morphotrust.generator.data import read_images, read_manifest
from morphotrust.trust import TrustScorer, fit_stage, trust_config

ROOT = Path(__file__).resolve().parents[1]


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian_filter(images.astype(np.float64), sigma=(0, 0, sigma, sigma))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsets", required=True, help="the subsets stage's folder (manifest.parquet, stacks/)")
    parser.add_argument("--autoencoders", nargs="*", default=[], help="autoencoder.json files to judge")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--blur", nargs="*", type=float, default=[0.5, 0.75])
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    subsets = Path(args.subsets)
    manifest = read_manifest(subsets / "manifest.parquet")
    resolution = int(np.load(subsets / "stacks" / "train.npy", mmap_mode="r").shape[-1])
    encoder, batch = encoder_from_config(config["features"], args.threads)

    def features(images):
        return extract(iter(images), len(images), encoder, batch)

    split_rows = {s: manifest[(manifest["Metadata_split"] == s) & manifest["Metadata_arm"].isin(["seen", "unseen"])]
                  .reset_index(drop=True) for s in ("train", "calibration", "evaluation")}
    for split in ("train", "calibration"):
        path = out / f"real_{split}.parquet"
        if not path.exists():
            rows = split_rows[split]
            write_features(rows, features(read_images(subsets / "stacks", rows, resolution)), {"encoder": "ceiling"},
                           path)
    trust_cfg = trust_config(json.dumps(config["trust"]))
    calibration = out / "real_calibration.parquet" if trust_cfg["calibration_source"] == "calibration_split" else None
    fit_stage(out / "real_train.parquet", calibration, trust_cfg, out / "trust", ("cell_type", "sirna_id"))
    scorer = TrustScorer.load(out / "trust" / "scorer")

    rows = split_rows["evaluation"]
    rows = rows[rows["Metadata_arm"] == "seen"].reset_index(drop=True)
    real = read_images(subsets / "stacks", rows, resolution)
    attrs = {"cell_type": rows["Metadata_cell_type"].astype(str).to_numpy(),
             "sirna_id": rows["Metadata_sirna_id"].astype(np.int64).to_numpy()}
    variants = {"real evaluation sites": real}
    variants.update({f"blur sigma {s} px": blurred(real, s) for s in args.blur})
    for path in args.autoencoders:
        codec = load_codec(path)
        meta = json.loads(Path(path).read_text())
        label = (f"{meta['kind']} autoencoder {Path(path).parent.name} ({meta['latent_channels']} ch, "
                 f"f = {meta['downsample']})")
        variants[label] = codec.decode_uint8(codec.encode_uint8(real))
    results = []
    for label, images in variants.items():
        scores = scorer.score(features(images), attrs)
        psnr = psnr_per_stain(real, images) if images is not real else [float("inf")] * 6
        results.append(dict(images=label, n_sites=len(images), accepted_fraction=float(scorer.accept(scores).mean()),
                            median_R=float(scores["R"].median()), median_T=float(scores["T"].median()),
                            psnr_per_stain=[round(p, 2) for p in psnr], psnr_mean=float(np.mean(psnr))))
    (out / "ceiling.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"seen-arm evaluation sites at {resolution} px; trust threshold κ = {scorer.threshold_:.2f}")
    print("| images | accepted | median R | median T | PSNR per stain (dB) | mean PSNR |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['images']} | {r['accepted_fraction']:.0%} | {r['median_R']:.1f} | {r['median_T']:.1f} | "
              f"{', '.join(f'{p:.1f}' for p in r['psnr_per_stain'])} | {r['psnr_mean']:.1f} |")


if __name__ == "__main__":
    main()
