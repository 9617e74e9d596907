"""Command line of the generated-sources stage: `morphotrust generated <command> ...` (the generated.smk rules:
demo stand-ins, external generations and their real reference; peer-copies writes the known-answer test sets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..generator.cli import dispatch


def standins(argv: list[str]) -> None:
    """`morphotrust generated standins ...`"""
    from .standins import make_standins

    parser = argparse.ArgumentParser(prog="morphotrust generated standins",
                                     description="Stand-ins for generated images from held-out real sites.")
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--stack", required=True, help="results/subsets/stacks/evaluation.npy")
    parser.add_argument("--config", required=True, help="the `generated.standins` config section as JSON")
    parser.add_argument("--out-dir", required=True, help="results/generated/standins")
    args = parser.parse_args(argv)
    make_standins(args.manifest, args.stack, json.loads(args.config), args.out_dir)


def external(argv: list[str]) -> None:
    """`morphotrust generated external ...` (convert) and `... external --reference SPLIT` (the real reference)."""
    from ..errors import InputError
    from .external import build_reference, convert_external
    from .layouts import settings_of

    parser = argparse.ArgumentParser(prog="morphotrust generated external",
                                     description="Check and convert images from another generator.")
    parser.add_argument("--config", required=True, help="the generated.external config section as JSON")
    parser.add_argument("--subsets-resolution", type=int, required=True, help="subsets.resolution")
    parser.add_argument("--subsets-manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--sites", help="results/data/sites.parquet (conversion)")
    parser.add_argument("--native-px", type=int, help="side of a native real site in pixels (conversion)")
    parser.add_argument("--out-dir", help="results/generated/external (conversion)")
    parser.add_argument("--reference", choices=("train", "calibration", "evaluation"),
                        help="write the real reference of this split instead (to --out)")
    parser.add_argument("--out", help="results/generated/external/reference/{split}.npy")
    parser.add_argument("--seed", type=int, default=0, help="crop positions of the real reference")
    args = parser.parse_args(argv)
    try:
        settings = settings_of(json.loads(args.config), args.subsets_resolution)
    except ValueError as error:
        raise InputError(str(error)) from None
    if args.reference:
        build_reference(settings, args.subsets_manifest, args.reference, args.out, args.seed)
    else:
        convert_external(settings, args.sites, args.subsets_manifest, args.out_dir, args.native_px,
                         args.subsets_resolution)


def peer_copies(argv: list[str]) -> None:
    """`morphotrust generated peer-copies ...`"""
    import pandas as pd
    import yaml

    from ..io import write_csv
    from .peer_copies import FORMATS, write_peer_copies

    parser = argparse.ArgumentParser(prog="morphotrust generated peer-copies",
                                     description="Real held-out sites written as other generators write their images.")
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--folder", required=True, help="where to write the images")
    parser.add_argument("--configfile", required=True, help="write a --configfile that scores them here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table, external = write_peer_copies(pd.read_parquet(args.manifest), args.format, args.folder, args.seed)
    write_csv(table, Path(args.folder) / "copies.csv")
    Path(args.configfile).write_text(yaml.safe_dump({"generated": {"source": "external", "external": external}},
                                                    sort_keys=False))
    print(f"{len(table)} {args.format} copies in {args.folder}: " + ", ".join(
        f"{k} {n}" for k, n in table["kind"].value_counts().items()))


COMMANDS = {"standins": standins, "external": external, "peer-copies": peer_copies}


def cli(argv: list[str]) -> None:
    dispatch("generated", COMMANDS, argv)
