"""Command line of the morphology stage: `python -m morphotrust morphology <command>`.

Imports only the standard library at module level: `run-chunk` runs inside the CellProfiler conda environment.
"""

from __future__ import annotations

import argparse


def _diameter(text: str):
    low, _, high = text.partition(",")
    return float(low), float(high)


def _gate_options(parser, required=False) -> None:
    parser.add_argument("--pixel-size-um", type=float, required=required,
                        help="segmentation gate: µm per pixel of the measured images")
    parser.add_argument("--nuclei-diameter-um", type=_diameter, required=required, metavar="MIN,MAX",
                        help="segmentation gate: nuclei diameter range in µm")
    parser.add_argument("--gate", default="{}", help="the morphology.gate config section as JSON")
    parser.add_argument("--source", default="real", help="name of the source in messages")
    parser.add_argument("--stop-on-failure", action="store_true",
                        help="stop when more than gate.max_failed_fraction of the sites fail the gate")


def _gate_kwargs(args) -> dict | None:
    import json

    if args.pixel_size_um is None:
        return None
    return {"pixel_size_um": args.pixel_size_um, "nuclei_diameter_um": args.nuclei_diameter_um,
            "gate": json.loads(args.gate)}


def cli(argv) -> None:
    parser = argparse.ArgumentParser(prog="morphotrust morphology")
    commands = parser.add_subparsers(dest="command", required=True)

    pipeline = commands.add_parser("pipeline", help="write the pipeline copy with sizes set from µm")
    pipeline.add_argument("--template", required=True, help="the .cppipe (config morphology.pipeline)")
    pipeline.add_argument("--pixel-size-um", type=float, required=True,
                          help="µm per pixel of the images CellProfiler measures (at morphology.resolution)")
    pipeline.add_argument("--nuclei-diameter-um", type=_diameter, required=True, metavar="MIN,MAX",
                          help="nuclei diameter range in µm (morphology.nuclei_diameter_um)")
    pipeline.add_argument("--light", action="store_true",
                          help="a light QC pipeline: only the nuclei and image-quality size settings are required")
    pipeline.add_argument("--out", required=True)

    prepare = commands.add_parser("prepare", help="write PNGs and LoadData chunk CSVs for one source")
    prepare.add_argument("--source", required=True, choices=("real", "generated", "reconstructions", "qc"))
    prepare.add_argument("--manifest", required=True)
    prepare.add_argument("--resolution", type=int, required=True, help="px CellProfiler measures")
    prepare.add_argument("--native-px", type=int, default=None,
                         help="real sites: the native size the pixel size is worked out for (checked)")
    prepare.add_argument("--via-px", type=int, default=None,
                         help="pass each site through this size first (real sites: the generator's resolution)")
    prepare.add_argument("--chunk-size", type=int, required=True)
    prepare.add_argument("--max-sites-per-condition", type=int, default=None)
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--out-dir", required=True)

    scale = commands.add_parser("scale", help="write the run's comparison scale (scale.json)")
    scale.add_argument("--scale", required=True, help="JSON of morphotrust.morphology.scale.scale_of(config)")
    scale.add_argument("--resize", nargs="+", required=True, help="resize.json of each source (from prepare)")
    scale.add_argument("--out", required=True)

    run = commands.add_parser("run-chunk", help="run headless CellProfiler on one chunk CSV")
    run.add_argument("--cellprofiler", required=True, help="executable (path or name on PATH)")
    run.add_argument("--pipeline", required=True)
    run.add_argument("--data-file", required=True, help="chunk CSV written by prepare")
    run.add_argument("--out", required=True, help="where the chunk's Image.csv goes")
    run.add_argument("--log", required=True, help="CellProfiler's full log")

    merge = commands.add_parser("merge", help="merge chunk Image.csv tables into one parquet")
    merge.add_argument("--sites", required=True, help="sites.parquet written by prepare")
    merge.add_argument("--out", required=True)
    merge.add_argument("chunks", nargs="+", help="chunk Image.csv tables")
    _gate_options(merge)

    qc_merge = commands.add_parser("qc-merge", help="QC pass of every plate -> one table, segmentation gate applied")
    qc_merge.add_argument("--out", required=True, help="results/morphology/qc_image.parquet")
    qc_merge.add_argument("plates", nargs="+", help="per-plate QC folders (chunks/sites.parquet + image.csv)")
    _gate_options(qc_merge, required=True)

    clean = commands.add_parser("clean", help="fit the feature cleaner on real rows, apply to both")
    clean.add_argument("--real", required=True)
    clean.add_argument("--generated", required=True)
    clean.add_argument("--also", nargs="+", default=(), metavar="SOURCE_image.parquet",
                       help="more per-image tables to clean with the same cleaner (-> SOURCE_clean.parquet)")
    clean.add_argument("--out-dir", required=True)
    clean.add_argument("--variance-filter", choices=("relative", "raw"), required=True,
                       help="relative: SD / mean |value| <= --relative-variance-threshold (unit-free); raw: the "
                            "paper's variance <= --variance-threshold")
    clean.add_argument("--relative-variance-threshold", type=float, required=True)
    clean.add_argument("--variance-threshold", type=float, required=True)
    clean.add_argument("--max-abs-z", type=float, required=True)
    args = parser.parse_args(argv)

    if args.command == "run-chunk":
        from .cellprofiler import main_run_chunk

        main_run_chunk(args)
    elif args.command == "pipeline":
        from .pipeline import write_pipeline

        changes = write_pipeline(args.template, args.out, pixel_size_um=args.pixel_size_um,
                                 nuclei_diameter_um=args.nuclei_diameter_um, light=args.light)
        print(f"{args.out}: {len(changes)} setting(s) changed for {args.pixel_size_um:g} µm per pixel")
        for change in changes:
            print(f"  {change}")
    elif args.command == "prepare":
        from .sites import prepare

        sites = prepare(args.source, args.manifest, args.out_dir, resolution=args.resolution,
                        chunk_size=args.chunk_size, max_sites_per_condition=args.max_sites_per_condition,
                        seed=args.seed, native_px=args.native_px, via_px=args.via_px)
        print(f"{args.source}: {len(sites)} sites in {sites['chunk'].nunique()} chunk(s) -> {args.out_dir}")
    elif args.command == "scale":
        import json

        from .scale import write_scale

        info = write_scale(json.loads(args.scale), args.resize, args.out)
        print(f"{args.out}: {json.dumps(info)}")
    elif args.command == "merge":
        from .sites import merge

        gate = _gate_kwargs(args)
        table = merge(args.sites, args.chunks, args.out, gate=gate)
        print(f"{args.out}: {len(table)} rows, {table.shape[1]} columns")
        if gate is not None:
            from .gate import check_source, failure_summary

            print(f"segmentation gate: {failure_summary(table)}")
            if args.stop_on_failure:  # a failed job's output is removed by Snakemake
                check_source(table, source=f"{args.source} (full pipeline)", file=args.out, **gate)
    elif args.command == "qc-merge":
        from .sites import qc_merge

        table, summary = qc_merge(args.plates, args.out, **_gate_kwargs(args))
        print(f"{args.out}: {len(table)} sites of {len(args.plates)} plate(s); segmentation gate: {summary}")
    else:
        from .cleaning import clean

        report = clean(args.real, args.generated, args.out_dir, args.variance_filter, args.variance_threshold,
                       args.relative_variance_threshold, args.max_abs_z, also=args.also)
        print(f"kept {report['kept_features']} features ({args.variance_filter} variance filter; kept under each: "
              f"{report['kept_features_by_variance_filter']}); dropped columns: {report['dropped_columns']}; "
              f"real rows used {report['n_real_rows_used']} of {report['n_real_rows_in']}; generated rows dropped "
              f"for NaN {report['n_generated_rows_dropped_nan']} of {report['n_generated_rows_in']}")
