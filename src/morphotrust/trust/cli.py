"""Command line of the trust stage: `morphotrust trust fit|adequacy|score|baselines` (workflow/rules/trust.smk).

Parsers only; the work is done in morphotrust.trust.stage.
"""

from __future__ import annotations

import argparse
import contextlib

from ..config import check_section
from . import stage


@contextlib.contextmanager
def _blas_threads(threads: int | None):
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def add_fitting_arguments(parser: argparse.ArgumentParser) -> None:
    """--scorer, --train, --calibration: what `stage.fit_scorers` fits the baselines on (also used by
    `morphotrust validation corruptions`)."""
    parser.add_argument("--scorer", required=True, help="results/trust/scorer (.npz/.json prefix)")
    parser.add_argument("--train", required=True, help="results/reduction/real_train.parquet")
    parser.add_argument("--calibration", default=None, help="results/reduction/real_calibration.parquet "
                        "(omit when trust.calibration_source is fit_pool)")


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust trust")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the trust scorer on real seen-arm features; calibrate; threshold")
    fit.add_argument("--train", required=True, help="results/features/real_train.parquet")
    fit.add_argument("--calibration", default=None, help="results/features/real_calibration.parquet "
                     "(needed when calibration_source is calibration_split)")
    fit.add_argument("--out-dir", required=True, help="writes scorer.npz/.json, threshold.json, real_scores.parquet")
    score = commands.add_parser("score", help="score generated features; accept / abstain; summary; histogram")
    score.add_argument("--scorer", required=True, help="results/trust/scorer (.npz/.json prefix)")
    score.add_argument("--features", required=True, help="results/features/generated.parquet")
    score.add_argument("--real-scores", required=True, help="results/trust/real_scores.parquet")
    score.add_argument("--out-dir", required=True,
                       help="writes generated_scores.parquet/.csv, condition_summary.csv, trust_histogram.png")
    score.add_argument("--coverage", default=None, help="results/subsets/coverage.csv: adds columns coverage_low, "
                       "coverage_note")
    score.add_argument("--adequacy", default=None, help="results/trust/adequacy.csv: flag F of such values")
    adequacy = commands.add_parser("adequacy", help="how well the fitted scorer separates every attribute value "
                                   "on held-out real sites")
    adequacy.add_argument("--scorer", required=True, help="results/trust/scorer (.npz/.json prefix)")
    adequacy.add_argument("--heldout", required=True, help="results/reduction/real_evaluation.parquet")
    adequacy.add_argument("--min-auroc", type=float, required=True,
                          help="margin AUROC below which a value is not informative")
    adequacy.add_argument("--out-dir", required=True, help="writes adequacy.csv and adequacy.json")
    fit.add_argument("--config", default="{}", help="the `trust` config section as JSON (keys left out take the "
                     "schema's defaults)")
    fit.add_argument("--attributes", nargs="+", default=["cell_type", "sirna_id"],
                     help="attributes, read from the Metadata_<attribute> columns")
    baselines = commands.add_parser("baselines", help="fit the baseline scorers like T, score the generated "
                                    "features (results/baselines/)")
    add_fitting_arguments(baselines)
    baselines.add_argument("--generated", required=True, help="results/reduction/generated.parquet")
    baselines.add_argument("--trust-scores", required=True, help="results/trust/generated_scores.parquet")
    baselines.add_argument("--config", required=True, help="the `baselines` config section as JSON")
    baselines.add_argument("--out-dir", required=True, help="writes generated_scores.parquet/.csv and thresholds.json")
    for sub in (fit, score, adequacy):
        sub.add_argument("--threads", type=int, default=None, help="BLAS threads")
    args = parser.parse_args(argv)
    if args.command == "baselines":
        stage.baselines_stage(args.scorer, args.train, args.calibration, args.generated, args.trust_scores,
                              check_section("baselines", args.config), args.out_dir)
        return
    with _blas_threads(args.threads):
        if args.command == "fit":
            cfg = stage.trust_config(args.config)
            calibration = args.calibration if cfg["calibration_source"] == "calibration_split" else None
            stage.fit_stage(args.train, calibration, cfg, args.out_dir, tuple(args.attributes))
        elif args.command == "adequacy":
            stage.adequacy_stage(args.scorer, args.heldout, args.min_auroc, args.out_dir)
        else:
            stage.score_stage(args.scorer, args.features, args.real_scores, args.out_dir,
                              coverage_path=args.coverage, adequacy_csv=args.adequacy)
