"""Scale benchmark: a dry run of the whole workflow on a full-size synthetic RxRx1 metadata table.

125,510 sites, 51 experiments x 4 plates, 1,139 siRNA ids, 4 cell types (RxRx1's shape: each experiment is
one cell type; each plate holds a quarter of the treatment siRNAs plus the controls). Every (cell type,
siRNA) pair is listed in conditions.yaml (~10% unseen). No image exists: a dry run reads only metadata.csv.
Reports the time to build the DAG (`snakemake -n`, wall clock of the whole command) and the number of jobs.

With `--images`, every site also gets its six PNG files (750,000 empty files; the DAG only stats them): the dry
run then lists each plate folder into its file inventory (morphotrust.data.inventory). It runs twice: the first
writes the 204 inventories, the second finds them unchanged (the cost of every later run).

Usage: .venv/bin/python benchmarks/bench_dag.py [--images]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from morphotrust.data.demo import rxrx1_shaped_metadata

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="morphotrust-bench-dag-"))
    try:
        metadata = rxrx1_shaped_metadata()
        (work / "rxrx1").mkdir()
        metadata.to_csv(work / "rxrx1" / "metadata.csv", index=False)
        with_images = "--images" in sys.argv[1:]
        if with_images:
            start = time.perf_counter()
            for (experiment, plate), rows in metadata.groupby(["experiment", "plate"]):
                folder = work / "rxrx1" / "images" / experiment / f"Plate{plate}"
                folder.mkdir(parents=True)
                for well, site in zip(rows["well"], rows["site"]):
                    for c in range(1, 7):
                        os.close(os.open(folder / f"{well}_s{site}_w{c}.png", os.O_CREAT | os.O_WRONLY, 0o644))
            print(f"wrote {6 * len(metadata):,} empty image files in {time.perf_counter() - start:.0f} s")
        pairs = metadata.groupby(["cell_type", "sirna_id"]).size()
        pairs = pairs[pairs >= 8].index.tolist()
        rng = np.random.default_rng(0)
        unseen = set(rng.choice(len(pairs), size=len(pairs) // 10, replace=False).tolist())
        conditions = {"seen": [], "unseen": []}
        for i, (cell_type, sirna_id) in enumerate(pairs):
            conditions["unseen" if i in unseen else "seen"].append({"cell_type": cell_type, "sirna_id": int(sirna_id)})
        shutil.copytree(REPO / "config", work / "config")
        (work / "config" / "conditions.yaml").write_text(yaml.safe_dump(conditions))
        config = yaml.safe_load((work / "config" / "config.yaml").read_text())
        config["data"]["rxrx1_path"] = str(work / "rxrx1")
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))

        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                   "--directory", str(work), "--workflow-profile", "none", "-n", "--quiet", "rules", "--cores", "32"]
        runs = []
        for _ in range(2 if with_images else 1):
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            runs.append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
        seconds = runs[-1]
        total = re.search(r"^total\s+(\d+)", result.stdout, flags=re.M)
        print(result.stdout[result.stdout.find("Job stats"):])
        print(f"sites {len(metadata):,}  experiments {metadata['experiment'].nunique()}  "
              f"plates {metadata.groupby(['experiment', 'plate']).ngroups}  siRNAs {metadata['sirna_id'].nunique()}  "
              f"conditions {len(pairs):,} ({len(unseen)} unseen)")
        if with_images:
            print(f"dry run with 750k image files: first (writes the inventories) {runs[0]:.1f} s, "
                  f"second (inventories unchanged) {runs[1]:.1f} s")
        print(f"dry run (DAG construction, whole command): {seconds:.1f} s, jobs: {total.group(1) if total else '?'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
