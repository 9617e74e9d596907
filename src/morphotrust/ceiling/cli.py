"""Command line of the ceiling stage: `python -m morphotrust ceiling --scorer ... --out-dir results/ceiling`."""

from __future__ import annotations

import argparse
import json

from .stage import ceiling_stage


def cli(argv: list[str]) -> None:
    """`morphotrust ceiling ...`"""
    parser = argparse.ArgumentParser(prog="morphotrust ceiling",
                                     description="Score the autoencoder's held-out reconstructions like generations: "
                                                 "the best any generator on its latents can reach.")
    parser.add_argument("--scorer", required=True, help="results/trust/scorer (.npz + .json)")
    parser.add_argument("--features", required=True, help="results/reduction/reconstructions.parquet")
    parser.add_argument("--real-scores", required=True, help="results/trust/real_scores.parquet")
    parser.add_argument("--cp-real", required=True, nargs="+", help="results/morphology/real_clean.parquet")
    parser.add_argument("--cp-reconstructions", required=True,
                        help="results/morphology/reconstructions_clean.parquet")
    parser.add_argument("--autoencoder", required=True, help="results/autoencoder/autoencoder.json")
    parser.add_argument("--config", default="{}", help="the `validation` config section as JSON")
    parser.add_argument("--out-dir", required=True, help="results/ceiling")
    args = parser.parse_args(argv)
    result = ceiling_stage(args.scorer, args.features, args.real_scores, args.cp_real, args.cp_reconstructions,
                           args.autoencoder, args.out_dir, json.loads(args.config))
    for arm, figures in result["arms"].items():
        print(f"ceiling, {arm}: {figures}")
