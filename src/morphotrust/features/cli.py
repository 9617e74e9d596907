"""The command line of the features stage: `python -m morphotrust features real|generated ...`."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from ..images import IMAGE_PROBLEM, N_CHANNELS
from .encoders import describe, encoder_from_config
from .extract import (batch_sites, extract, iter_manifest_images, iter_stack, merge_shard_tables, real_split_rows,
                      shard_rows, with_image_problems, write_features)


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust features")
    commands = parser.add_subparsers(dest="command", required=True)
    real = commands.add_parser("real", help="features of one split of the real subset sites")
    real.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    real.add_argument("--stack", required=True, help="results/subsets/stacks/{split}.npy")
    real.add_argument("--split", required=True, choices=("train", "calibration", "evaluation"))
    generated = commands.add_parser("generated", help="features of the images of a generated manifest")
    generated.add_argument("--manifest", required=True, help="results/generated/{source}/manifest.parquet")
    for sub in (real, generated):
        sub.add_argument("--config", required=True, help="the checked `features` config section as JSON")
        sub.add_argument("--threads", type=int, default=None, help="CPU threads (overrides the config)")
        sub.add_argument("--image-channels", type=int, default=N_CHANNELS, choices=(N_CHANNELS, 3),
                         help="3: the images are RGB composites (generated.external.channels)")
        sub.add_argument("--out", required=True, help="feature table (.parquet); a .json sidecar goes beside it")
        sub.add_argument("--shard", type=int, default=0, help="condition group to extract (with --shards > 1)")
        sub.add_argument("--shards", type=int, default=1, help="features.shards")
        sub.add_argument("--merge", nargs="+", metavar="SHARD_TABLE",
                         help="write --out from these shard tables (in shard order) instead of extracting")
    args = parser.parse_args(argv)
    if args.merge:
        merge_shard_tables(args.merge, args.out)
        print(f"{len(args.merge)} shards -> {args.out}")
        return

    encoder, batch_size = encoder_from_config(json.loads(args.config), args.threads, args.image_channels)
    print(describe(encoder), flush=True)
    manifest = pd.read_parquet(args.manifest)
    rows = real_split_rows(manifest, args.split) if args.command == "real" else manifest.reset_index(drop=True)
    keep, source = slice(None), {"source": args.command}
    if args.shards > 1:
        rows, keep = shard_rows(rows, args.shard, args.shards, batch_sites(encoder, batch_size), args.manifest)
        source["shard"] = [args.shard, args.shards]
    if args.command == "real":
        images = iter_stack(args.stack, rows["Metadata_stack_index"].astype(int))
        source = {**source, "split": args.split, "manifest": args.manifest, "stack": args.stack}
        desc = f"features real {args.split}"
    else:
        problems: list[str] = []
        images = iter_manifest_images(rows, args.manifest, problems)
        source["manifest"] = args.manifest
        desc = "features generated"
    features = extract(images, len(rows), encoder, batch_size, desc=desc)
    if args.command == "generated":  # flagged, and scored like any other image (the trust score rejects them)
        rows = with_image_problems(rows, problems)
        flagged = rows.iloc[keep][IMAGE_PROBLEM].loc[lambda problem: problem != ""]
        if len(flagged):
            print(f"WARNING: {len(flagged)} image(s) cannot be microscopy sites (column {IMAGE_PROBLEM}; the first: "
                  f"{flagged.iloc[0]}); they are scored like the others", flush=True)
    rows, features = rows.iloc[keep].reset_index(drop=True), features[keep]
    write_features(rows, features, {**encoder.info, **source}, args.out)
    print(f"{len(rows)} images -> {features.shape[1]} features: {args.out}")


