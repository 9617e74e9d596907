"""Command line of the report stage: `python -m morphotrust report {plate,generated,summary} ...`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import InputError
from .config import report_settings
from .inputs import Inputs


INPUT_OPTIONS = {
    "manifest": "results/subsets/manifest.parquet",
    "stacks_dir": "results/subsets/stacks (folder of {split}.npy)",
    "sites": "results/data/sites.parquet",
    "qc_skipped": "results/data/qc_skipped.csv",
    "generated": "results/generated/{source}/manifest.parquet",
    "scores": "results/trust/generated_scores.parquet",
    "real_scores": "results/trust/real_scores.parquet",
    "threshold": "results/trust/threshold.json (trust_histogram.png is read beside it)",
    "morphology_real": "results/morphology/real_image.parquet",
    "morphology_generated": "results/morphology/generated_image.parquet",
    "morphology_qc": "results/morphology/qc_image.parquet (QC pass of every ingested site)",
    "validation_dir": "results/validation",
    "features_dir": "results/features (the *.json sidecars)",
    "generation_trust": "results/generation_trust/summary.json (summary only; generated.source generator)",
}


def _add_inputs(parser) -> None:
    group = parser.add_argument_group("inputs (each optional: a panel without its input says 'not available')")
    for name, help_text in INPUT_OPTIONS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=help_text)
    parser.add_argument("--config", default="{}", help="the `report` config section as JSON")


def _inputs(args) -> Inputs:
    return Inputs(**{name: getattr(args, name) for name in INPUT_OPTIONS})


def _plate_of(path: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.+)_Plate(\d+)\.html", Path(path).name)
    if match is None:
        raise InputError("not a plate report name", where=f"--plate-reports {path}",
                         expected="{experiment}_Plate{plate}.html")
    return match.group(1), int(match.group(2))


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust report", description="Reports for people: self-contained "
                                     "HTML (inline CSS, images embedded as base64 PNG; no network needed).")
    commands = parser.add_subparsers(dest="command", required=True)

    plate = commands.add_parser("plate", help="QC report of one real plate")
    plate.add_argument("--experiment", required=True)
    plate.add_argument("--plate", type=int, required=True)
    plate.add_argument("--out", required=True, help="results/report/plates/{experiment}_Plate{plate}.html")
    plate.add_argument("--map", default=None, help="also write the plate map as a PNG here")
    _add_inputs(plate)

    generated = commands.add_parser("generated", help="QC report of the generated set, per condition")
    generated.add_argument("--source", default=None, help="name of the generated set (config generated.source)")
    generated.add_argument("--out", required=True, help="results/report/generated.html")
    generated.add_argument("--map", default=None, help="also write the condition map as a PNG here")
    _add_inputs(generated)

    summary = commands.add_parser("summary", help="run summary across plates and conditions")
    summary.add_argument("--plate-reports", nargs="*", default=[], help="the plate reports to link")
    summary.add_argument("--generated-report", default=None, help="the generated-set report to link")
    summary.add_argument("--results-dir", default="results", help="the folder whose files are listed")
    summary.add_argument("--snakemake-version", default=None)
    summary.add_argument("--cellprofiler", default=None, help="CellProfiler executable, asked for --version")
    summary.add_argument("--out", required=True, help="results/report/summary.html")
    summary.add_argument("--flags", required=True, help="results/report/qc_flags.csv")
    summary.add_argument("--acceptance", default=None, help="also write the acceptance-per-condition PNG here")
    _add_inputs(summary)
    args = parser.parse_args(argv)

    cfg = report_settings(args.config)
    inputs = _inputs(args)
    if args.command == "plate":
        from .plate import write_plate_report

        write_plate_report(args.experiment, args.plate, inputs, cfg, args.out, args.map)
    elif args.command == "generated":
        from .generated import write_generated_report

        write_generated_report(inputs, cfg, args.out, args.map, source=args.source)
    else:
        from .summary import write_summary

        plates = [_plate_of(p) for p in args.plate_reports]
        plates_dir = Path(args.plate_reports[0]).parent if args.plate_reports else None
        write_summary(inputs, cfg, plates, args.out, args.flags, args.acceptance, results_dir=args.results_dir,
                      generated_html=args.generated_report, plates_dir=plates_dir,
                      snakemake_version=args.snakemake_version, cellprofiler=args.cellprofiler)
    print(f"wrote {args.out}")
