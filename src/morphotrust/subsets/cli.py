"""Command line of the subsets stage: `python -m morphotrust subsets {manifest,stack} ...`."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from .manifest import SPLITS, write_stack, write_subsets


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust subsets")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("manifest", help="select sites and assign splits")
    make.add_argument("--sites", required=True)
    make.add_argument("--conditions", required=True)
    make.add_argument("--config", required=True, help="the `subsets` config section as JSON")
    make.add_argument("--metadata", help="metadata.csv of the ingested folder (with --skipped: names skipped sites)")
    make.add_argument("--skipped", help="results/data/qc_skipped.csv: sites left out at ingest")
    make.add_argument("--out-dir", required=True)

    stack = commands.add_parser("stack", help="write the image stack of one split")
    stack.add_argument("--manifest", required=True)
    stack.add_argument("--split", required=True, choices=SPLITS)
    stack.add_argument("--resolution", type=int, required=True)
    stack.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "manifest":
        manifest = write_subsets(args.sites, args.conditions, json.loads(args.config), args.out_dir,
                                 args.metadata, args.skipped)
        print(f"{len(manifest)} sites: " + ", ".join(
            f"{s} {n}" for s, n in manifest["Metadata_split"].value_counts().reindex(SPLITS).items()))
    else:
        write_stack(pd.read_parquet(args.manifest), args.split, args.resolution, args.out)
