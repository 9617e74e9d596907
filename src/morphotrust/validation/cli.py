"""Command line of the validation stage: `python -m morphotrust validation <analysis> ...`."""

from __future__ import annotations

import argparse
import json

from . import centroid, correlations, corruptions, deciles, distances, kid, scorers, shift
from .common import SPACES, settings
from .summary import summarise


def cli(argv: list[str]) -> None:
    from ..trust.cli import add_fitting_arguments

    parser = argparse.ArgumentParser(prog="morphotrust validation",
                                     description="Validation analyses of trust-scored generated samples.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text, space=False, trust=True, generated=True):
        sub = commands.add_parser(name, help=help_text)
        if space:
            sub.add_argument("--space", required=True, choices=SPACES, help="CellProfiler (cp) or encoder features")
        sub.add_argument("--real", required=True, nargs="+", help="real feature table(s) (parquet)")
        if generated:
            sub.add_argument("--generated", required=True, help="generated feature table (parquet)")
        if trust:
            sub.add_argument("--trust", required=True, help="results/trust/generated_scores.parquet")
        if name != "shift":
            sub.add_argument("--config", default="{}", help="the `validation` config section as JSON")
        sub.add_argument("--out-dir", required=True)
        return sub

    command("centroid", "real-spread-normalised centroid distance z (CP space)")
    command("deciles", "trust-decile classifiers tested on held-out real", space=True)
    command("correlations", "per-feature correlations of condition means (CP space)")
    command("kid", "KID / ΔKID, selection gain, condition ranking, ΔKID per decile (encoder space)")
    command("distances", "energy distance, MMD and discrimination test", space=True)
    command("shift", "graded shift: mean trust vs Hamming distance to the training support", generated=False)
    compare = command("scorers", "every per-sample score judged as T is: acceptance, degenerate threshold, pooled "
                      "ΔKID gain, ρ over conditions, centroid Δz, Spearman with z")
    compare.add_argument("--scores", required=True, help="results/baselines/generated_scores.parquet")
    compare.add_argument("--thresholds", required=True, help="results/baselines/thresholds.json")
    compare.add_argument("--centroid", help="results/validation/centroid_per_sample.csv (none: CellProfiler "
                         "validation not applicable)")
    compare.add_argument("--kid", required=True, help="results/validation/kid_per_condition.csv")
    corrupted = commands.add_parser("corruptions", help="held-out real sites vs corrupted copies: AUROC of every "
                                    "score per corruption")
    corrupted.add_argument("--stack", required=True, help="results/subsets/stacks/evaluation.npy")
    corrupted.add_argument("--heldout", required=True, help="results/reduction/real_evaluation.parquet")
    corrupted.add_argument("--reduction", required=True, help="results/reduction/reduction (.npz/.json prefix)")
    add_fitting_arguments(corrupted)
    corrupted.add_argument("--features-config", required=True, help="the `features` config section as JSON")
    corrupted.add_argument("--baselines-config", required=True, help="the `baselines` config section as JSON")
    corrupted.add_argument("--config", default="{}", help="the `validation` config section as JSON (its seed)")
    corrupted.add_argument("--threads", type=int, default=None, help="CPU threads for the encoder")
    corrupted.add_argument("--out-dir", required=True)
    summary = commands.add_parser("summary", help="collect headline numbers into summary.json")
    summary.add_argument("--inputs", required=True, nargs="+", help="per-analysis headline JSON files")
    summary.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "summary":
        result = summarise(args.inputs, args.out)
    elif args.command == "shift":
        result = shift.run(args.real, args.trust, args.out_dir)
    elif args.command == "corruptions":
        result = corruptions.run(args.stack, args.heldout, args.reduction, args.scorer, args.train,
                                 args.calibration, json.loads(args.features_config), json.loads(args.baselines_config),
                                 args.out_dir, settings(json.loads(args.config))["seed"], args.threads)
    elif args.command == "scorers":
        result = scorers.run(args.real, args.generated, args.trust, args.scores, args.thresholds, args.centroid,
                             args.kid, args.out_dir, settings(json.loads(args.config)))
    else:
        cfg = settings(json.loads(args.config))
        real = args.real[0] if len(args.real) == 1 else args.real
        if args.command in ("deciles", "distances"):
            module = deciles if args.command == "deciles" else distances
            result = module.run(args.space, real, args.generated, args.trust, args.out_dir, cfg)
        else:
            module = {"centroid": centroid, "correlations": correlations, "kid": kid}[args.command]
            result = module.run(real, args.generated, args.trust, args.out_dir, cfg)
    print(json.dumps(result, indent=2, default=str, allow_nan=True))
