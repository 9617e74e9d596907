"""Benchmark of the validation stage on synthetic tables of realistic size.

    .venv/bin/python benchmarks/bench_validation.py                     # 5,000 generated, 52 conditions
    .venv/bin/python benchmarks/bench_validation.py --n-generated 1000  # quicker

Writes contract-conforming inputs to a temporary folder (CellProfiler tables with --cp-features columns,
encoder tables per split with --encoder-dim float32 columns, trust scores), then times every analysis as
the workflow runs it (`run(...)`: read the parquet inputs, compute, write tables, plots and headline JSON),
one after the other in this process, and reports seconds per analysis and the total. Set OMP_NUM_THREADS
(default here: 1, as the rules run on a shared machine) to time with more BLAS threads.

Data: 4 cell types × 13 siRNAs (= 52 conditions, 4 unseen); per condition the real sites split 60/20/20
into train / calibration / evaluation (unseen: all evaluation); generated samples = condition phenotype
plus noise, a third of them phenotype-free with a higher trust score (so the analyses have real work:
accepted subsets differ from random ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from morphotrust.validation import centroid, correlations, deciles, distances, kid, shift  # noqa: E402
from morphotrust.validation.summary import summarise  # noqa: E402

CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")


def write_inputs(folder: Path, n_real: int, n_generated: int, n_sirnas: int, cp_features: int, encoder_dim: int,
                 seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in CELL_TYPES for s in range(n_sirnas)]
    unseen = {(c, n_sirnas - 1 - i) for i, c in enumerate(CELL_TYPES)}  # one new combination per cell type

    def meta(n):
        index = np.arange(n) % len(pairs)
        df = pd.DataFrame({"Metadata_cell_type": [pairs[i][0] for i in index],
                           "Metadata_sirna_id": [pairs[i][1] for i in index]})
        df["Metadata_condition"] = df["Metadata_cell_type"] + ":" + df["Metadata_sirna_id"].astype(str)
        df["Metadata_arm"] = ["unseen" if pairs[i] in unseen else "seen" for i in index]
        return df, index

    def features(index, dim, dtype, scale, prefix):
        effects = rng.normal(0, scale, (len(pairs), dim))
        X = (effects[index] + rng.normal(size=(len(index), dim))).astype(dtype)
        return X, effects, [f"{prefix}{j:04d}" for j in range(dim)]

    real, real_index = meta(n_real)
    order = real.groupby("Metadata_condition").cumcount().to_numpy() % 10
    real["Metadata_split"] = np.where(order < 6, "train", np.where(order < 8, "calibration", "evaluation"))
    real.loc[real["Metadata_arm"] == "unseen", "Metadata_split"] = "evaluation"
    real["Metadata_site_id"] = [f"site{i}" for i in range(n_real)]
    generated, gen_index = meta(n_generated)
    generated["Metadata_sample_id"] = [f"gen{i:06d}" for i in range(n_generated)]
    bad = rng.random(n_generated) < 1 / 3

    paths = {}
    for space, dim, dtype, prefix in (("cp", cp_features, np.float64, "Cells_Measure_"),
                                      ("encoder", encoder_dim, np.float32, "Feature_")):
        X_real, effects, names = features(real_index, dim, dtype, 1.0, prefix)
        X_gen = (effects[gen_index] + rng.normal(size=(n_generated, dim))).astype(dtype)
        X_gen[bad] = rng.normal(size=(bad.sum(), dim)) * 2.0
        real_table = pd.concat([real, pd.DataFrame(X_real, columns=names)], axis=1)
        gen_table = pd.concat([generated, pd.DataFrame(X_gen, columns=names)], axis=1)
        if space == "cp":
            paths["cp_real"], paths["cp_generated"] = folder / "real_clean.parquet", folder / "generated_clean.parquet"
            real_table.to_parquet(paths["cp_real"])
            gen_table.to_parquet(paths["cp_generated"])
        else:
            paths["encoder_real"] = []
            for split in ("train", "calibration", "evaluation"):
                path = folder / f"real_{split}.parquet"
                real_table[real_table["Metadata_split"] == split].to_parquet(path)
                paths["encoder_real"].append(path)
            paths["encoder_generated"] = folder / "generated.parquet"
            gen_table.to_parquet(paths["encoder_generated"])
    T = rng.normal(size=n_generated) + 3.0 * bad
    trust = generated.assign(R=0.5 * T, F=0.5 * T, T=T, accepted=T <= np.quantile(T, 0.6))
    paths["trust"] = folder / "generated_scores.parquet"
    trust.to_parquet(paths["trust"])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-generated", type=int, default=5000)
    parser.add_argument("--n-real", type=int, default=5000)
    parser.add_argument("--n-sirnas", type=int, default=13, help="conditions = 4 cell types × this")
    parser.add_argument("--cp-features", type=int, default=600)
    parser.add_argument("--encoder-dim", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_validation_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        paths = write_inputs(folder, args.n_real, args.n_generated, args.n_sirnas, args.cp_features,
                             args.encoder_dim, args.seed)
        print(f"inputs written in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        out = folder / "validation"
        cp = (paths["cp_real"], paths["cp_generated"], paths["trust"], out)
        encoder = (paths["encoder_real"], paths["encoder_generated"], paths["trust"], out)
        analyses = {
            "centroid (CP)": lambda: centroid.run(*cp),
            "correlations (CP)": lambda: correlations.run(*cp),
            "deciles (CP)": lambda: deciles.run("cp", *cp),
            "deciles (encoder)": lambda: deciles.run("encoder", *encoder),
            "kid (encoder)": lambda: kid.run(*encoder),
            "distances (CP)": lambda: distances.run("cp", *cp),
            "distances (encoder)": lambda: distances.run("encoder", *encoder),
            "graded shift": lambda: shift.run(paths["encoder_real"][0], paths["trust"], out),
            "summary": lambda: summarise(sorted(out.glob("*.json")), out / "summary.json"),
        }
        timings = {}
        for name, analysis in analyses.items():
            start = time.perf_counter()
            analysis()
            timings[name] = time.perf_counter() - start
            print(f"{name:22s} {timings[name]:8.1f} s", file=sys.stderr)
    total = sum(timings.values())
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "sizes": {"generated": args.n_generated, "real": args.n_real, "conditions": 4 * args.n_sirnas,
                  "cp_features": args.cp_features, "encoder_dim": args.encoder_dim},
        "seconds": {k: round(v, 2) for k, v in timings.items()}, "total_seconds": round(total, 2),
    }
    print("\n| analysis | seconds |\n|---|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** |\n\n{report['machine']}; sizes {report['sizes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
