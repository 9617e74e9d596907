"""Validation analyses: do trusted generated samples look more like real cells of their condition?

All analyses use real samples of the same conditions as ground truth, which the trust score never sees
(spec: /work/shared/spec/validation.md). One module per analysis family, each with pure functions on arrays
and tables plus a `run(...)` that reads the stage inputs and writes a CSV table, a PNG plot and a JSON of
headline numbers under `results/validation/`:

- `centroid`      real-spread-normalised centroid distance z(x) (CP space), trust-accepted vs matched random
- `deciles`       classifiers trained on each trust decile of generated samples, tested on held-out real
- `correlations`  per-feature Pearson r of condition means, trust-accepted vs random (CP space)
- `kid`           KID / ΔKID (encoder space), selection gain, Spearman ρ of mean T/R/F vs ΔKID, ΔKID per decile
- `distances`     energy distance and MMD per condition, discrimination test (rank of the true condition),
                  copairs retrieval mean average precision (generated retrieving real of their condition)
- `shift`         graded shift: mean T per condition vs Hamming distance to the training support
- `scorers`       every per-sample score (T, R, F and the baselines of morphotrust.trust.baselines) judged as T is
- `corruptions`   held-out real sites, clean vs corrupted copies: AUROC of every score per corruption
`summary` collects the headline numbers into `results/validation/summary.json`.

Command line: `python -m morphotrust validation <analysis> ...` (see `cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io import read_json, write_json
from . import centroid, correlations, corruptions, deciles, distances, kid, scorers, shift
from .common import DEFAULTS, SPACES, settings

__all__ = ["DEFAULTS", "settings", "run_all", "summarise", "cli",
           "centroid", "correlations", "corruptions", "deciles", "distances", "kid", "scorers", "shift"]


def summarise(headline_paths, out_path) -> dict:
    """Merge the per-analysis headline JSON files into one summary (keyed by file name without .json)."""
    summary = {Path(p).stem: read_json(p) for p in headline_paths}
    write_json(summary, out_path)
    return summary


def run_all(cp_real, cp_generated, encoder_real, encoder_generated, trust, out_dir, cfg: dict | None = None) -> dict:
    """Every analysis, in order, on one set of stage outputs (e.g. the demo's); returns the summary.

    `encoder_real`: the real feature tables (train, calibration, evaluation). Writes what the workflow's
    validate rules write, including `summary.json`.
    """
    out = Path(out_dir)
    centroid.run(cp_real, cp_generated, trust, out, cfg)
    correlations.run(cp_real, cp_generated, trust, out, cfg)
    kid.run(encoder_real, encoder_generated, trust, out, cfg)
    spaces = {"cp": (cp_real, cp_generated), "encoder": (encoder_real, encoder_generated)}
    for space, (real, generated) in spaces.items():
        deciles.run(space, real, generated, trust, out, cfg)
        distances.run(space, real, generated, trust, out, cfg)
    shift.run(encoder_real, trust, out)
    headlines = [out / centroid.OUTPUTS["headline"], out / correlations.OUTPUTS["headline"],
                 out / kid.OUTPUTS["headline"], out / shift.OUTPUTS["headline"]]
    headlines += [out / deciles.outputs(s)["headline"] for s in SPACES]
    headlines += [out / distances.outputs(s)["headline"] for s in SPACES]
    return summarise(headlines, out / "summary.json")


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
