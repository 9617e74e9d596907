"""Command line of the data stage: `python -m morphotrust data <command>`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .demo import SYNTHETIC_LABEL, demo_config
from .rxrx1 import LAYOUTS


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust data", description="Data stage: an RxRx1 folder (or the "
                                     "synthetic demo) -> canonical six-channel TIFF per site + sites table.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo_help = "the data.demo config as JSON (keys left out take their defaults)"
    p = commands.add_parser("demo-metadata", help="write the SYNTHETIC demo's metadata.csv, demo_effects.json "
                            "and SYNTHETIC_DATA_README.txt")
    p.add_argument("--out", help="demo folder (the three files go there unless given one by one)")
    p.add_argument("--metadata", help="metadata.csv to write")
    p.add_argument("--effects", help="demo_effects.json to write")
    p.add_argument("--readme", help="SYNTHETIC_DATA_README.txt to write")
    p.add_argument("--demo", default="{}", help=demo_help)

    p = commands.add_parser("render-plate", help="render one plate of the SYNTHETIC demo (one PNG per channel)")
    place = p.add_mutually_exclusive_group(required=True)
    place.add_argument("--out", help="demo folder (the plate goes to images/{experiment}/Plate{plate})")
    place.add_argument("--plate-dir", help="the plate folder itself")
    p.add_argument("--experiment", required=True)
    p.add_argument("--plate", required=True, type=int)
    p.add_argument("--demo", default="{}", help=demo_help)

    p = commands.add_parser("render-demo", help="write the whole SYNTHETIC demo dataset in one process")
    p.add_argument("--out", required=True, help="demo folder")
    p.add_argument("--demo", default="{}", help=demo_help)

    p = commands.add_parser("ingest-plate", help="one plate -> canonical TIFF per site + sites and QC tables")
    p.add_argument("--metadata", required=True, help="the RxRx1 folder's metadata.csv (images/ lies beside it)")
    p.add_argument("--experiment", required=True)
    p.add_argument("--plate", required=True, type=int)
    p.add_argument("--layout", choices=LAYOUTS, required=True)
    p.add_argument("--on-bad-site", choices=("stop", "skip"), required=True)
    p.add_argument("--sixteen-bit", choices=("convert", "refuse"), required=True,
                   help="16-bit sites: convert to 8 bits (see --sixteen-bit-max), or refuse them as bad sites")
    p.add_argument("--sixteen-bit-max", type=int, required=True,
                   help="the 16-bit value that becomes 255 (higher values are clipped)")
    p.add_argument("--sites-dir", required=True, help="folder for the plate's canonical TIFFs")
    p.add_argument("--table", required=True, help="the plate's sites table (parquet)")
    p.add_argument("--qc", required=True, help="the plate's QC table (CSV)")

    p = commands.add_parser("merge", help="all plates' sites and QC tables -> one of each")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--qc-tables", nargs="+", required=True)
    p.add_argument("--metadata", help="the RxRx1 folder's metadata.csv: also report image folders beside it "
                   "that no metadata row refers to")
    p.add_argument("--on-bad-site", choices=("stop", "skip"), required=True)
    p.add_argument("--sites", required=True, help="merged sites table (parquet)")
    p.add_argument("--qc", required=True, help="merged QC table of skipped sites and files (CSV)")
    p.add_argument("--problems", help="on_bad_site stop: every problem of every plate goes here (CSV) when the run "
                   "stops on them")

    p = commands.add_parser("demo-grid", help="PNG grid: one composite site per cell type and siRNA")
    p.add_argument("--sites", required=True, help="sites table (parquet)")
    p.add_argument("--effects", help="demo_effects.json (labels columns with the stains each siRNA acts on)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-columns", type=int, default=14)

    args = parser.parse_args(argv)
    if args.command in ("demo-metadata", "render-plate", "render-demo"):
        try:
            demo = demo_config(json.loads(args.demo))
        except json.JSONDecodeError as error:
            raise InputError(f"not valid JSON: {error}", where="--demo") from None
        print(f"{SYNTHETIC_LABEL}: {json.dumps(demo, sort_keys=True)}", flush=True)

    if args.command == "demo-metadata":
        from .demo import write_demo_metadata

        if args.out is None and None in (args.metadata, args.effects, args.readme):
            parser.error("demo-metadata: give --out, or all of --metadata, --effects and --readme")
        metadata = write_demo_metadata(args.out, demo, metadata=args.metadata, effects=args.effects,
                                       readme=args.readme)
        print(f"wrote {len(metadata)} site rows, {metadata['well_id'].nunique()} wells, "
              f"{metadata[['experiment', 'plate']].drop_duplicates().shape[0]} plates")
    elif args.command == "render-plate":
        from .demo import render_plate

        n = render_plate(args.out, args.experiment, args.plate, demo, plate_dir=args.plate_dir)
        print(f"rendered {n} synthetic sites of {args.experiment}/Plate{args.plate}")
    elif args.command == "render-demo":
        from .demo import render_demo

        metadata = render_demo(args.out, demo)
        print(f"rendered {len(metadata)} synthetic sites to {args.out}")
    elif args.command == "ingest-plate":
        from .ingest import ingest_plate

        sites, qc = ingest_plate(Path(args.metadata).parent, args.experiment, args.plate, sites_dir=args.sites_dir,
                                 table_path=args.table, qc_path=args.qc, layout=args.layout,
                                 on_bad_site=args.on_bad_site, sixteen_bit=args.sixteen_bit,
                                 sixteen_bit_max=args.sixteen_bit_max)
        print(f"ingested {len(sites)} sites of {args.experiment}/Plate{args.plate}; "
              f"{len(qc)} problem(s) recorded in {args.qc}"
              + (" (on_bad_site is stop: data_merge stops the run with every plate's problems)"
                 if len(qc) and args.on_bad_site == "stop" else ""))
        for line in qc.itertuples():
            print(f"  {line.action}: {line.file}: [{line.problem}] {line.detail}")
    elif args.command == "merge":
        from .ingest import merge

        sites = merge(args.tables, args.qc_tables, sites_path=args.sites, qc_path=args.qc,
                      root=Path(args.metadata).parent if args.metadata else None,
                      on_bad_site=args.on_bad_site, problems_path=args.problems)
        skipped = pd.read_csv(args.qc)
        print(f"{len(sites)} sites in {args.sites}" + (" (SYNTHETIC demo)" if sites["Metadata_synthetic"].any()
                                                       else ""))
        print(f"{len(skipped)} skipped site(s) or file(s) recorded in {args.qc}")
    elif args.command == "demo-grid":
        from .grid import site_grid

        shown = site_grid(args.sites, args.out, args.effects, args.max_columns)
        print(f"wrote {args.out} ({len(shown)} sites)")
