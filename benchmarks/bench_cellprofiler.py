"""Benchmark of the morphology stage: headless CellProfiler on demo sites at the workflow's resolution.

    .venv/bin/python benchmarks/bench_cellprofiler.py              # 40 demo sites at 64 px
    .venv/bin/python benchmarks/bench_cellprofiler.py --sites 12   # quicker

Sites: rendered by the demo renderer (morphotrust.data, one cell type after another), box-filtered to
--resolution, written as a generated manifest of canonical TIFFs. The pipeline is
resources/cellprofiler/rxrx1_six_stain.cppipe with sizes set for the demo's 112-µm field at that resolution. Measured, each run timed in wall
time and in CPU time of the child processes (CPU time is the work done, little disturbed by other processes
on a shared machine):

  start-up and per site  bare `cellprofiler -c -r` on 1 site and on all sites (one process each; the images
                         as float .npy, as the chunk jobs give them):
                         per site = (t_all - t_1) / (sites - 1), start-up = t_1 - per site;
  workflow overhead      `snakemake` running the morphology rules (pipeline copy, prepare, one chunk job,
                         merge) on the same sites in one chunk, against the bare run on all sites;
  parallel speed-up      the same rules with the sites in 2 chunks and `--cores 2`, against 1 chunk.

With --repeats N the four runs are interleaved N times and the best wall and CPU time of each are kept.
On a shared machine the wall times (and the speed-up) depend on the other load: the load average is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from morphotrust.data.demo import demo_pixel_size_um, render_site
from morphotrust.images import resize_site, write_site
from morphotrust.morphology.cellprofiler import cellprofiler_command, numpy_chunk, resolve_executable
from morphotrust.morphology.pipeline import write_pipeline
from morphotrust.morphology.sites import prepare

REPO = Path(__file__).resolve().parents[1]
CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")

# A minimal Snakefile around the real rule file: the generated manifest is the only input.
SNAKEFILE = """
import os, sys
configfile: "config.yaml"
SPLITS = ["train", "calibration", "evaluation"]
os.environ["PYTHONPATH"] = {src!r}
os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))
sys.path.insert(0, {src!r})
import json, shlex
from morphotrust.errors import InputError
from morphotrust.morphology.scale import scale_of as morphology_scale_of
def cli_json(section):
    return shlex.quote(json.dumps(section, sort_keys=True))
include: {rules!r}
"""


def timed(command, **kwargs) -> tuple[float, float]:
    """(wall s, CPU s of children) of one subprocess run; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_sites(work: Path, n: int, resolution: int) -> Path:
    rows = []
    for i in range(n):
        cell_type = CELL_TYPES[i % len(CELL_TYPES)]
        site = render_site(cell_type, 1138, f"{cell_type}-01_1_B02_{i}", f"{cell_type}-01", 1,
                           {"image_size": max(128, resolution)})  # drawn at (at least) the measured size
        path = work / "results" / "generated" / "bench" / "images" / f"s{i:03d}.tif"
        write_site(path, resize_site(site, resolution))
        rows.append({"Metadata_sample_id": f"s{i:03d}", "Metadata_condition": f"{cell_type}:1138",
                     "Metadata_image_path": str(path.relative_to(work))})
    manifest = work / "results" / "generated" / "bench" / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


def bare(executable, pipeline, chunks_dir: Path, out_dir: Path):
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    data_file = numpy_chunk(chunks_dir / "chunk_001.csv", out_dir)  # the images as the chunk jobs give them
    return timed(cellprofiler_command(executable, pipeline, data_file, out_dir))


def workflow(work: Path, executable: str, resolution: int, chunk_size: int, cores: int):
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["rxrx1_path"] = None
    config["data"].setdefault("demo", {})["image_size"] = 128  # the sites' native size; measured at `resolution`
    config["generated"]["source"] = "bench"
    config["morphology"].update(cellprofiler=executable, chunk_size=chunk_size, max_sites_per_condition=None,
                                resolution=resolution,
                                pipeline=str(REPO / "resources" / "cellprofiler" / "rxrx1_six_stain.cppipe"))
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "Snakefile").write_text(SNAKEFILE.format(src=str(REPO / "src"),
                                                     rules=str(REPO / "workflow" / "rules" / "morphology.smk")))
    shutil.rmtree(work / "results" / "morphology", ignore_errors=True)
    shutil.rmtree(work / "results" / "logs", ignore_errors=True)
    return timed([sys.executable, "-m", "snakemake", "--snakefile", "Snakefile", "--cores", str(cores),
                  "--workflow-profile", "none", "--quiet", "all", "--", "results/morphology/generated_image.parquet"],
                 cwd=work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--cellprofiler", default=str(REPO / ".venv-cellprofiler" / "bin" / "cellprofiler"))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the best time of each is kept")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.sites < 4 or args.sites % 2:
        parser.error("--sites must be even and at least 4")
    executable = resolve_executable(args.cellprofiler)
    json_path = Path(args.json).resolve() if args.json else None
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench_cellprofiler_") as tmp:
        work = Path(tmp)
        manifest = make_sites(work, args.sites, args.resolution)
        pipeline = work / "pipeline.cppipe"
        # demo sites show a 112-µm field at any size: the pixel size follows the resolution
        write_pipeline(REPO / "resources" / "cellprofiler" / "rxrx1_six_stain.cppipe", pipeline,
                       pixel_size_um=demo_pixel_size_um(args.resolution), nuclei_diameter_um=(6.0, 30.0))
        os.chdir(work)  # manifest image paths are relative to the working directory
        prepare("generated", manifest, work / "all", resolution=args.resolution, chunk_size=args.sites, progress=False)
        one = work / "one"
        one.mkdir()
        os.symlink(work / "all" / "images", one / "images")
        pd.read_csv(work / "all" / "chunk_001.csv").head(1).to_csv(one / "chunk_001.csv", index=False)

        print(f"{args.sites} demo sites at {args.resolution} px; CellProfiler {executable}", flush=True)
        runs = {"one": [], "all": [], "wf1": [], "wf2": []}
        for _ in range(args.repeats):  # interleaved; the best of each kind is kept (least disturbed)
            runs["one"].append(bare(executable, pipeline, one, work / "out_one"))
            runs["all"].append(bare(executable, pipeline, work / "all", work / "out_all"))
            runs["wf1"].append(workflow(work, executable, args.resolution, args.sites, cores=1))
            runs["wf2"].append(workflow(work, executable, args.resolution, args.sites // 2, cores=2))
        t_one, t_all, t_wf1, t_wf2 = ((min(w for w, _ in r), min(c for _, c in r)) for r in runs.values())
        per_site = [(a - o) / (args.sites - 1) for a, o in zip(t_all, t_one)]
        startup = [o - p for o, p in zip(t_one, per_site)]

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "sites": args.sites, "resolution": args.resolution, "repeats": args.repeats,
        "bare_1_site_s": {"wall": t_one[0], "cpu": t_one[1]},
        "bare_all_sites_s": {"wall": t_all[0], "cpu": t_all[1]},
        "seconds_per_site": {"wall": per_site[0], "cpu": per_site[1]},
        "startup_per_process_s": {"wall": startup[0], "cpu": startup[1]},
        "workflow_1_chunk_s": {"wall": t_wf1[0], "cpu": t_wf1[1]},
        "workflow_overhead": {"wall": t_wf1[0] / t_all[0] - 1, "cpu": t_wf1[1] / t_all[1] - 1},
        "workflow_2_chunks_2_cores_s": {"wall": t_wf2[0], "cpu": t_wf2[1]},
        "parallel_speedup_2_jobs": t_wf1[0] / t_wf2[0],
    }
    print(json.dumps(results, indent=2, default=float))
    print(f"\n| measure ({args.sites} sites, {args.resolution} px) | wall | CPU |\n|---|---|---|")
    for label, key in (("CellProfiler s per site", "seconds_per_site"),
                       ("CellProfiler start-up s per process", "startup_per_process_s"),
                       ("bare `cellprofiler -c -r`, all sites, s", "bare_all_sites_s"),
                       ("workflow (snakemake, 1 chunk), s", "workflow_1_chunk_s")):
        print(f"| {label} | {results[key]['wall']:.2f} | {results[key]['cpu']:.2f} |")
    print(f"| workflow overhead over bare | {results['workflow_overhead']['wall']:+.1%} | "
          f"{results['workflow_overhead']['cpu']:+.1%} |")
    print(f"| 2 chunks on 2 cores, s (speed-up {results['parallel_speedup_2_jobs']:.2f}x) | "
          f"{t_wf2[0]:.2f} | {t_wf2[1]:.2f} |")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
