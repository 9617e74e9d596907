"""Real held-out demo sites written in each peer generator's format, scored through the workflow's external path.

    .venv/bin/python benchmarks/bench_external_formats.py --demo /tmp/demo --out /tmp/external_formats

`--demo` is a working directory where the demo has been rendered up to the subsets (config/ and results/data,
results/subsets, e.g. `snakemake results/subsets/manifest.parquet`). For each format of
morphotrust.generated.peer_copies (tiff, the native form, and the presets sit, morphodiff, cellflux, impa) this
copies that directory, writes every studied evaluation site twice in the format (requested under its own
condition, and under another studied siRNA of its cell type), and runs the real Snakemake workflow with
generated.source external up to results/trust/generated_scores.parquet (generator.autoencoder none: the
autoencoder's ceiling is not needed to judge external images). Prints a Markdown table of the accepted fraction
of true-label copies and of wrong-label copies per format, and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("tiff", "sit", "morphodiff", "cellflux", "impa")


def run(fmt: str, demo: Path, out: Path, cores: int) -> dict:
    workdir = out / fmt
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(demo / "config", workdir / "config")
    for part in ("data", "subsets"):
        shutil.copytree(demo / "results" / part, workdir / "results" / part, symlinks=True)
    configfile = workdir / "external.yaml"
    python = [sys.executable, "-m", "morphotrust", "generated", "peer-copies"]
    subprocess.run([*python, "--manifest", "results/subsets/manifest.parquet", "--format", fmt,
                    "--folder", str(workdir / "images"), "--configfile", str(configfile)], cwd=workdir, check=True)
    config = yaml.safe_load(configfile.read_text())
    config["generator"] = {"autoencoder": "none"}
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                    "results/trust/generated_scores.parquet", "--workflow-profile", "none", "--cores", str(cores),
                    "--configfile", str(configfile)], cwd=workdir, check=True,
                   stdout=open(workdir / "snakemake.log", "w"), stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    copies = pd.read_csv(workdir / "images" / "copies.csv")
    scores = pd.read_parquet(workdir / "results" / "trust" / "generated_scores.parquet")
    joined = copies.merge(scores[["Metadata_external_path", "accepted", "R", "T"]], left_on="path",
                          right_on="Metadata_external_path", how="left", validate="one_to_one")
    row = {"format": fmt, "seconds": round(seconds, 1), "n": len(joined)}
    for kind in ("copy", "wrong_label"):
        mine = joined[joined["kind"] == kind]
        row[f"{kind}_accepted"] = float(mine["accepted"].astype(bool).mean())
        row[f"{kind}_n"] = len(mine)
        row[f"{kind}_median_R"] = float(mine["R"].median())
    judging = workdir / "results" / "generated" / "external" / "judging.json"
    row["judging"] = json.loads(judging.read_text())["sentences"] if judging.exists() else []
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    rows = [run(fmt, args.demo.resolve(), args.out.resolve(), args.cores) for fmt in args.formats]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print("| format | true label accepted | wrong label accepted | median R (true / wrong) | run (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['format']} | {row['copy_accepted']:.0%} of {row['copy_n']} | "
              f"{row['wrong_label_accepted']:.0%} of {row['wrong_label_n']} | "
              f"{row['copy_median_R']:.1f} / {row['wrong_label_median_R']:.1f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
