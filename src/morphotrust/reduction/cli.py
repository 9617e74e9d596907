"""Command line of the reduction stage: `morphotrust reduction fit|transform` (workflow/rules/reduction.smk).

Parsers only; the work is done in morphotrust.reduction.stage.
"""

from __future__ import annotations

import argparse

from . import stage


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust reduction")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the reduction on the real seen-arm training features")
    fit.add_argument("--train", required=True, help="results/features/real_train.parquet")
    fit.add_argument("--config", default="{}", help="the `reduction` config section as JSON (keys "
                     "left out take the schema's defaults)")
    fit.add_argument("--out", required=True, help="results/reduction/reduction (.npz/.json prefix)")
    transform = commands.add_parser("transform", help="apply the fitted reduction to a feature table")
    transform.add_argument("--reduction", required=True, help="results/reduction/reduction (.npz/.json prefix)")
    transform.add_argument("--features", required=True, help="a feature table (.parquet with .json sidecar)")
    transform.add_argument("--out", required=True, help="the reduced table (.parquet); a .json sidecar beside it")
    args = parser.parse_args(argv)
    if args.command == "fit":
        stage.fit_stage(args.train, stage.reduction_config(args.config), args.out)
    else:
        stage.transform_stage(args.reduction, args.features, args.out)
