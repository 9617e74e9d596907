"""Wall time of the whole demo workflow: locally (workflow/profiles/default) and through a local single-node
SLURM cluster (scripts/local_slurm.sh, needs root) with workflow/profiles/slurm.

Each run starts from an empty working directory with a copy of config/. For SLURM the profile is used as it is,
except that memory and threads are cut to fit this machine's one node (as in tests/test_slurm.py); the status
polling is the profile's (the plugin's default: first check 40 s after a submission, then every 10-50 s more),
or every few seconds with --fast-poll. The cluster is started if needed and stopped afterwards if it was not
running before.

Usage: .venv/bin/python benchmarks/bench_demo.py [--only local|slurm] [--fast-poll] [--set KEY=VALUE ...]
       (--set data.demo.plates_per_experiment=1 changes config/config.yaml keys in the copies)
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]


def workdir_with_config(root: Path, overrides: dict) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(REPO / "config", root / "config")
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[key] = value
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def node_sized_profile(directory: Path) -> Path:
    """workflow/profiles/slurm with memory at 1 GB and threads at most this machine's CPU count."""
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["mem_mb"] = 1000
    for resources in profile["set-resources"].values():
        if "mem_mb" in resources:
            resources["mem_mb"] = 1000
    cpus = os.cpu_count()
    profile["set-threads"] = {rule: min(int(n), cpus) for rule, n in profile["set-threads"].items()}
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def timed_run(workdir: Path, args: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    jobs = re.search(r"^total\s+(\d+)$", result.stdout + result.stderr, flags=re.M)
    return seconds, int(jobs.group(1)) if jobs else -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["local", "slurm"])
    parser.add_argument("--fast-poll", action="store_true", help="SLURM status checks every ~2 s (as the test)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config/config.yaml key (dotted) and YAML value for both runs")
    args = parser.parse_args(argv)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}

    print(f"machine: {os.cpu_count()} CPUs; config overrides: {overrides or 'none'}")
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "local"):
            seconds, jobs = timed_run(workdir_with_config(tmp / "local", overrides),
                                      ["--workflow-profile", str(REPO / "workflow" / "profiles" / "default")])
            print(f"local (profiles/default, --cores all): {seconds:7.1f} s wall, {jobs} jobs")
        if args.only in (None, "slurm"):
            was_running = subprocess.run(["bash", str(LOCAL_SLURM), "status"], capture_output=True).returncode == 0
            subprocess.run(["bash", str(LOCAL_SLURM), "start"], check=True)
            try:
                extra = (["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
                         if args.fast_poll else [])
                seconds, jobs = timed_run(workdir_with_config(tmp / "slurm", overrides),
                                          ["--workflow-profile", str(node_sized_profile(tmp / "profile")), *extra])
                polling = "fast polling" if args.fast_poll else "the profile's polling"
                print(f"local SLURM (profiles/slurm, {polling}): {seconds:7.1f} s wall, {jobs} jobs")
            finally:
                if not was_running:
                    subprocess.run(["bash", str(LOCAL_SLURM), "stop"], check=False)


if __name__ == "__main__":
    main()
