"""CellProfiler seconds per site at 64, 128, 256 and 512 px: the light QC pass (resources/cellprofiler/qc_light.cppipe)
and the full six-stain pipeline (rxrx1_six_stain.cppipe).

    .venv/bin/python benchmarks/bench_cellprofiler_resolutions.py      # 8 demo sites per resolution, both pipelines
    .venv/bin/python benchmarks/bench_cellprofiler_resolutions.py --sites 16 --resolutions 128 512 --pipelines qc

Sites: demo sites rendered natively at each resolution (the demo's 112-µm field: 112 / R µm per pixel), prepared
with `morphology prepare --source qc` into one chunk as the workflow's per-plate job does, each pipeline set from
µm (`write_pipeline`). Per resolution and pipeline, bare `cellprofiler -c -r` runs on 1 site and on all sites (one
process each), the images handed over as the chunk jobs do (float .npy, morphology.cellprofiler.numpy_chunk):
per site = (t_all - t_1) / (sites - 1), start-up = t_1 - per site; the mean seconds per site of each module come
from CellProfiler's ExecutionTime_ columns. Wall time and the CPU time of the child processes (less disturbed by
other load on a shared machine) are both reported. The QC pass on the full RxRx1 (125,510 sites at 512 px) costs
per-site CPU s x sites + one start-up per plate (RxRx1: 51 experiments x 4 plates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import pandas as pd
from bench_cellprofiler import timed  # this folder is on sys.path when run as a script

from morphotrust.data.demo import demo_pixel_size_um, render_site
from morphotrust.images import write_site
from morphotrust.morphology.cellprofiler import cellprofiler_command, numpy_chunk, resolve_executable
from morphotrust.morphology.pipeline import write_pipeline
from morphotrust.morphology.sites import prepare

REPO = Path(__file__).resolve().parents[1]
CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")
RXRX1_SITES = 125_510
RXRX1_PLATES = 51 * 4
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
PIPELINES = {"qc": "qc_light.cppipe", "full": "rxrx1_six_stain.cppipe"}


def prepared(work: Path, n: int, resolution: int) -> Path:
    rows = []
    for i in range(n):
        cell_type = CELL_TYPES[i % len(CELL_TYPES)]
        site_id = f"{cell_type}-01_1_B{i + 2:02d}_1"
        path = work / f"s{i:03d}.tif"
        write_site(path, render_site(cell_type, 1138, site_id, f"{cell_type}-01", 1, {"image_size": resolution}))
        rows.append({"Metadata_site_id": site_id, "Metadata_image_path": str(path)})
    pd.DataFrame(rows).to_parquet(work / "sites.parquet")
    prepare("qc", work / "sites.parquet", work / "chunks", resolution=resolution, chunk_size=1_000_000,
            native_px=resolution, progress=False)
    return work / "chunks" / "chunk_001.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--pipelines", nargs="+", choices=tuple(PIPELINES), default=list(PIPELINES))
    parser.add_argument("--cellprofiler", default=str(REPO / ".venv-cellprofiler" / "bin" / "cellprofiler"))
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    executable = resolve_executable(args.cellprofiler)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_qc_") as tmp:
        for resolution in args.resolutions:
            work = Path(tmp) / str(resolution)
            work.mkdir()
            data_all = prepared(work, args.sites, resolution)
            data_one = work / "chunks" / "one.csv"
            lines = data_all.read_text().splitlines()
            data_one.write_text("\n".join(lines[:2]) + "\n")
            for name in args.pipelines:
                pipeline = work / f"{name}.cppipe"
                write_pipeline(REPO / "resources" / "cellprofiler" / PIPELINES[name], pipeline,
                               pixel_size_um=demo_pixel_size_um(resolution), nuclei_diameter_um=(6.0, 30.0),
                               light=name == "qc")
                out_one, out_all = work / f"{name}_out1", work / f"{name}_outn"
                one = timed(cellprofiler_command(executable, pipeline, numpy_chunk(data_one, out_one), out_one), env=ONE_THREAD)
                full = timed(cellprofiler_command(executable, pipeline, numpy_chunk(data_all, out_all), out_all), env=ONE_THREAD)
                per_wall = (full[0] - one[0]) / (args.sites - 1)
                per_cpu = (full[1] - one[1]) / (args.sites - 1)
                image = pd.read_csv(out_all / "Image.csv")
                modules = image[[c for c in image.columns if c.startswith("ExecutionTime_")]].mean()
                rows.append({"pipeline": name, "resolution_px": resolution, "sites": args.sites,
                             "per_site_wall_s": round(per_wall, 3), "per_site_cpu_s": round(per_cpu, 3),
                             "startup_wall_s": round(one[0] - per_wall, 2), "startup_cpu_s": round(one[1] - per_cpu, 2),
                             "module_s_per_site": {k.removeprefix("ExecutionTime_"): round(v, 3)
                                                   for k, v in modules.sort_values()[::-1].items()}})
                print(json.dumps(rows[-1]), flush=True)
    at_512 = [r for r in rows if r["resolution_px"] == 512 and r["pipeline"] == "qc"]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "rows": rows}
    if at_512:
        r = at_512[0]
        result["rxrx1_cpu_hours"] = round((r["per_site_cpu_s"] * RXRX1_SITES + r["startup_cpu_s"] * RXRX1_PLATES)
                                          / 3600, 1)
        print(f"QC pass on the full RxRx1 ({RXRX1_SITES} sites at 512 px, one job per plate): "
              f"{result['rxrx1_cpu_hours']} CPU hours")
    print(f"load average {result['load_average']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
