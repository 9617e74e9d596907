"""Scale benchmark: a dry run of the whole workflow on a full-size synthetic RxRx1 metadata table.

125,510 sites, 51 experiments x 4 plates, 1,139 siRNA ids, 4 cell types (RxRx1's shape: each experiment is
one cell type; each plate holds a quarter of the treatment siRNAs plus the controls). Every (cell type,
siRNA) pair is listed in conditions.yaml (~10% unseen). No image exists: a dry run reads only metadata.csv.
Reports the time to build the DAG (`snakemake -n`, wall clock of the whole command) and the number of jobs.

Usage: .venv/bin/python benchmarks/bench_dag.py
"""

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
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
        total = re.search(r"^total\s+(\d+)", result.stdout, flags=re.M)
        print(result.stdout[result.stdout.find("Job stats"):])
        print(f"sites {len(metadata):,}  experiments {metadata['experiment'].nunique()}  "
              f"plates {metadata.groupby(['experiment', 'plate']).ngroups}  siRNAs {metadata['sirna_id'].nunique()}  "
              f"conditions {len(pairs):,} ({len(unseen)} unseen)")
        print(f"dry run (DAG construction, whole command): {seconds:.1f} s, jobs: {total.group(1) if total else '?'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
