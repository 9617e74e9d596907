"""The demo's latent generator, piece by piece: train an autoencoder (or reuse one), train a flow model on its
latents, sample every condition, and judge the seen-arm samples and the autoencoder's ceiling with the
workflow's own fitted scorer (features -> reduction -> trust, exactly as the rules chain them).

    .venv/bin/snakemake --cores 2 results/trust/scorer.npz results/reduction/reduction.npz   # once, in WORKDIR
    .venv/bin/python benchmarks/latent_generator_probe.py --workdir WORKDIR --out /tmp/probe/unet \\
        --autoencoder '{"downsample": 2, "latent_channels": 8, "crop": 32, "steps": 6000}' \\
        --generator '{"preset": "unet", "steps": 2000}'

--autoencoder / --generator are JSON overrides of config generator.trained_autoencoder / generator (WORKDIR's
config/config.yaml); --autoencoder-json reuses a trained one instead, --sampling adds sampling-only variants of
the same checkpoint (e.g. '{"heun": {"sampler": "heun"}, "g1": {"guidance_scale": 1.0}}'). One torch thread.
Prints one JSON line per result (seconds, accepted fraction, median R and T, 30th percentile of T) and writes
results.json and the sampler's grid.png under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from morphotrust.features import encoder_from_config, extract
from morphotrust.generator.autoencoder import autoencoder_stage, load_codec
from morphotrust.generator.data import read_images, read_manifest
from morphotrust.generator.sample import run_sampling
from morphotrust.generator.train import train
from morphotrust.images import read_site
from morphotrust.reduction import FeatureReduction
from morphotrust.trust import TrustScorer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a workflow directory with results/subsets, trust, reduction")
    parser.add_argument("--out", required=True)
    parser.add_argument("--autoencoder", default="{}", help="JSON overrides of generator.trained_autoencoder")
    parser.add_argument("--autoencoder-json", default=None, help="reuse this autoencoder.json")
    parser.add_argument("--generator", default="{}", help="JSON overrides of generator")
    parser.add_argument("--sampling", default="{}", help="JSON {name: generator overrides} sampled from the model")
    parser.add_argument("--skip-flow", action="store_true", help="the autoencoder and its ceiling only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work, out = Path(args.workdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    subsets = work / "results" / "subsets"
    manifest_path, stacks = subsets / "manifest.parquet", subsets / "stacks"
    resolution = int(np.load(stacks / "train.npy", mmap_mode="r").shape[-1])
    cfg = dict(config["generator"], autoencoder="trained", num_workers=0, device="cpu")
    cfg["trained_autoencoder"] = dict(cfg["trained_autoencoder"], **json.loads(args.autoencoder))
    scorer = TrustScorer.load(work / "results" / "trust" / "scorer")
    reduction = FeatureReduction.load(work / "results" / "reduction" / "reduction")
    encoder, batch = encoder_from_config(config["features"], 1)
    results = []

    def judge(label, rows, images, **extra):
        scores = scorer.score(reduction.transform(extract(iter(images), len(images), encoder, batch)),
                              {"cell_type": rows["Metadata_cell_type"].astype(str).to_numpy(),
                               "sirna_id": rows["Metadata_sirna_id"].astype(np.int64).to_numpy()})
        results.append(dict(images=label, n=len(images), accepted=float(scorer.accept(scores).mean()),
                            median_R=float(scores["R"].median()), median_T=float(scores["T"].median()),
                            T_30th_percentile=float(np.quantile(scores["T"], 0.3)), threshold=scorer.threshold_,
                            **extra))
        print(json.dumps(results[-1]), flush=True)

    autoencoder = args.autoencoder_json
    if autoencoder is None:
        start = time.perf_counter()
        stage = autoencoder_stage(manifest_path, stacks, out / "autoencoder", cfg, resolution, "cpu")
        autoencoder = str(out / "autoencoder" / "autoencoder.json")
        psnr = stage["meta"]["reconstruction"]["psnr_per_stain"]
        extra = dict(seconds=round(time.perf_counter() - start), psnr_mean=float(np.mean(psnr)), psnr_per_stain=psnr)
    else:
        extra = {}
    manifest = read_manifest(manifest_path)
    held_out = manifest[(manifest["Metadata_split"] == "evaluation") & (manifest["Metadata_arm"] == "seen")]
    held_out = held_out.reset_index(drop=True)
    codec = load_codec(autoencoder)
    judge("autoencoder reconstructions (ceiling)", held_out,
          codec.decode_uint8(codec.encode_uint8(read_images(stacks, held_out, resolution))), **extra)
    if not args.skip_flow:
        cfg.update(json.loads(args.generator))
        start = time.perf_counter()
        train(manifest_path, stacks, out / "model", cfg, resolution, autoencoder=autoencoder)
        train_s = round(time.perf_counter() - start)
        variants = {"default": {}, **json.loads(args.sampling)}
        for name, overrides in variants.items():
            start = time.perf_counter()
            generated = run_sampling(manifest_path, stacks, out / "model" / "checkpoint.pt", out / f"generated_{name}",
                                     dict(cfg, **overrides), autoencoder=autoencoder)
            seen = generated[generated["Metadata_arm"] == "seen"].reset_index(drop=True)
            judge(f"generated, {cfg['preset']} {cfg['steps']} steps, sampling {name}", seen,
                  [read_site(p) for p in seen["Metadata_image_path"]], train_seconds=train_s,
                  sample_seconds=round(time.perf_counter() - start), sampling=overrides)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
