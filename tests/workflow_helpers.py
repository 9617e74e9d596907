"""Running the real Snakemake workflow in a temporary working directory, for the workflow tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
             "--workflow-profile", "none"]


def run_snakemake(workdir, *args, timeout=1800, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def make_workdir(tmp_path, **overrides):
    """A working directory with config/ copied from the repo and `overrides` merged into config.yaml."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    for dotted, value in overrides.items():
        section = config
        *parents, key = dotted.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[key] = value
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def workdir_with_results_of(run, tmp_path, parts, **overrides):
    """A working directory (make_workdir) holding copies of `parts` of an earlier run's results/ (e.g. the session's
    tiny demo's "data" and "subsets"), so that a test reruns only the stages it is about. Copied without Snakemake's
    records: the copies are taken as they are (no rerun for changed parameters)."""
    workdir = make_workdir(tmp_path, **overrides)
    for part in parts:
        shutil.copytree(run / "results" / part, workdir / "results" / part, symlinks=True)
    return workdir


# A smaller, quicker demo for the end-to-end tests: the science is tested elsewhere, these tests are about the
# workflow running, resuming and routing jobs. (The defaults in config/config.yaml are the README's demo.)
TINY_DEMO = {
    "data.demo.experiments_per_cell_type": 1, "data.demo.plates_per_experiment": 2,
    "features.image_size": 96,
    "morphology.max_sites_per_condition": 2, "morphology.max_generated_per_condition": 2, "morphology.chunk_size": 200,
    "validation.n_random_seeds": 2, "validation.deciles.max_iter": 100, "validation.centroid.n_bootstrap": 200,
    "generator.steps": 20, "generator.translator.steps": 50,
    "generator.trained_autoencoder.steps": 20, "generator.trained_autoencoder.warmup": 5,
    "generator.trained_autoencoder.checkpoint_every": 10,
    # the demo's shipped weights were trained on the default demo's data, not this smaller one
    "generator.init_weights": None, "generator.trained_autoencoder.init_weights": None,
}


# --- the local SLURM cluster (scripts/local_slurm.sh) ----------------------------------------------------------

LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"


def local_slurm(command):
    # Twice the cores as job slots: the tests' jobs are short and mostly wait on the executor's polling.
    env = {"MORPHOTRUST_SLURM_CPUS": str(2 * (os.cpu_count() or 1)), **os.environ}
    return subprocess.run(["bash", str(LOCAL_SLURM), command], capture_output=True, text=True, timeout=900, env=env)


def small_slurm_profile(directory):
    """The SLURM profile as it is, with memory and threads cut down to fit this machine's single node."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    profile["default-resources"]["mem_mb"] = 1000
    for resources in profile["set-resources"].values():
        if "mem_mb" in resources:
            resources["mem_mb"] = 1000
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def run_through_slurm(workdir, profile, *targets, timeout=2700):
    """Snakemake through `profile` on the local cluster, keeping each job's log (the environment it saw)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
               "--directory", str(workdir), "--workflow-profile", str(profile),
               # poll every few seconds, not every 40 s: a real cluster wants the profile's gentler default
               "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
               "--verbose", "--slurm-keep-successful-logs", *targets]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise AssertionError(f"the workflow failed through SLURM:\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}")
    return result
