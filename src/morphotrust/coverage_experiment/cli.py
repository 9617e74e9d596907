"""Command line of the coverage_experiment stage:
`python -m morphotrust coverage_experiment --train ... --out-dir results/coverage_experiment`."""

from __future__ import annotations

import argparse
import json

from .experiment import run


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust coverage_experiment",
                                     description="Thin the seen contexts of the unseen conditions' siRNAs, refit "
                                                 "the trust score and measure faithfulness AUROC and selection gain.")
    parser.add_argument("--train", required=True, help="results/features/real_train.parquet")
    parser.add_argument("--calibration", required=True, help="results/features/real_calibration.parquet")
    parser.add_argument("--evaluation", required=True, help="results/features/real_evaluation.parquet")
    parser.add_argument("--generated", required=True, help="results/features/generated.parquet")
    parser.add_argument("--config", default="{}", help="JSON: levels, trust, kid, seed")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    run(args.train, args.calibration, args.evaluation, args.generated, json.loads(args.config), args.out_dir)
