"""Data stage throughput: demo generation and ingest (sites/s), and planning the full RxRx1 metadata.

Runs in one process on one core, in a temporary folder, and reports wall and CPU time:

    .venv/bin/python benchmarks/bench_data.py            # default demo (768 sites at 128 px) + 512-px run
    .venv/bin/python benchmarks/bench_data.py --quick    # fewer sites

The workflow runs the same code as one job per plate (render, then ingest), so on N cores the stage takes
about (sites / rate) / N plus one Python start-up (~0.5 s) per job.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from morphotrust.config import schema_defaults
from morphotrust.data import plan_metadata
from morphotrust.data import demo
from morphotrust.data.ingest import ingest_plate


def timed(function, *args, **kwargs):
    """(result, (wall seconds, CPU seconds of this process)). CPU time is the steadier figure on a shared
    machine: wall time grows with other people's load, CPU time much less."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, np.array([time.perf_counter() - wall, time.process_time() - cpu])


def run_demo(root: Path, cfg: dict) -> list[tuple[str, int, float]]:
    """Render the demo, then ingest every plate; returns (what, sites, seconds) rows."""
    metadata, metadata_s = timed(demo.write_demo_metadata, root / "demo", cfg)
    plates = demo.demo_plates(demo.demo_config(cfg))
    render_s, ingest_s = np.zeros(2), np.zeros(2)
    for _, experiment, plate in plates:
        _, seconds = timed(demo.render_plate, root / "demo", experiment, plate, cfg, progress=False)
        render_s += seconds
    for _, experiment, plate in plates:
        out = root / "out" / experiment / f"Plate{plate}"
        _, seconds = timed(ingest_plate, root / "demo", experiment, plate, sites_dir=out / "sites",
                           table_path=out / "sites.parquet", qc_path=out / "qc.csv", progress=False)
        ingest_s += seconds
    site = metadata.iloc[0]
    _, one = timed(lambda: [demo.render_site(site.cell_type, site.sirna_id, f"{site.site_id}-{k}", site.experiment,
                                             site.plate, cfg) for k in range(50)])
    size = cfg["image_size"]
    n = len(metadata)
    return [
        (f"demo metadata + sidecar ({n} sites)", n, metadata_s),
        (f"render site arrays only, {size} px", 50, one),
        (f"demo generation (render + 6 PNG/site), {size} px", n, render_s),
        (f"ingest (6 PNG -> 1 TIFF/site), {size} px", n, ingest_s),
    ]


def plan_full_rxrx1(root: Path) -> tuple[str, int, float]:
    """plan_metadata on a metadata.csv the size of RxRx1's (125,510 rows)."""
    table = demo.rxrx1_shaped_metadata()
    folder = root / "rxrx1"
    folder.mkdir()
    table.to_csv(folder / "metadata.csv", index=False)
    _, seconds = timed(plan_metadata, {"rxrx1_path": str(folder)})
    return ("plan_metadata, RxRx1-sized metadata.csv", len(table), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one experiment and plate per cell type")
    args = parser.parse_args()
    DEMO_DEFAULTS = schema_defaults("data", "demo")
    default = dict(DEMO_DEFAULTS)
    large = {**DEMO_DEFAULTS, "experiments_per_cell_type": 1, "plates_per_experiment": 1, "wells_per_sirna": 1,
             "sites_per_well": 2, "image_size": 512}
    if args.quick:
        default.update(experiments_per_cell_type=1, plates_per_experiment=1)
        large.update(n_sirnas=2)
    rows = []
    before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as tmp:
        rows += run_demo(Path(tmp) / "default", default)
        rows += run_demo(Path(tmp) / "large", large)[2:]
        rows.append(plan_full_rxrx1(Path(tmp)))
    print(f"machine: {platform.processor() or platform.machine()}, 1 process "
          f"(numpy {np.__version__}, pandas {pd.__version__})")
    print(f"load average before / after: {before} / {os.getloadavg()[0]:.1f}")
    print(f"{'measurement':<52} {'sites':>7} {'wall s':>8} {'sites/s':>9} {'CPU s':>8} {'sites/CPU-s':>11}")
    for what, n, (wall, cpu) in rows:
        print(f"{what:<52} {n:>7} {wall:>8.2f} {n / wall:>9.1f} {cpu:>8.2f} {n / cpu:>11.1f}")


if __name__ == "__main__":
    main()
