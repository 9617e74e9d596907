"""Make the demo's shipped weights (resources/demo_weights/): train the autoencoder and the flow model on the
synthetic demo data with the workflow's own rules, for much longer than the demo itself trains, then export the
autoencoder and the flow model's EMA weights as init-weights files with a provenance file.

The demo (config/config.yaml: generator.init_weights, generator.trained_autoencoder.init_weights) starts from
these weights and trains a short while more. Rerun this when the demo data, its conditions or the networks change
(tests/test_demo_trust.py::test_the_shipped_demo_weights_fit_this_demo fails then and names this command). It
takes CPU-hours on one core; on a GPU set generator.device in OVERLAY (or pass --device cuda).

Usage: .venv/bin/python scripts/train_demo_weights.py [--workdir DIR] [--out resources/demo_weights]
       .venv/bin/python scripts/train_demo_weights.py --export-only --workdir DIR   (a finished DIR: export again)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# What the long run changes in config/config.yaml: from scratch, many more steps. Nothing else.
OVERLAY = {"generator": {"init_weights": None, "steps": 40000, "checkpoint_every": 2000,
                         "trained_autoencoder": {"init_weights": None, "steps": 30000, "checkpoint_every": 1000}}}
TIMINGS = "demo_weights_timings.json"
TARGETS = {"autoencoder": "results/autoencoder/autoencoder.json", "flow": "results/generator/checkpoint.pt"}


def snakemake_command(workdir: Path, target: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--workflow-profile", "none", "--directory", str(workdir), "--configfile", "config/config.yaml",
            "config/demo_weights.yaml", "--cores", "1", target]


def train(workdir: Path, device: str | None) -> None:
    """Run the rules up to each network in `workdir`; writes the command, wall and CPU seconds (of every job run
    for it) per network to `workdir`/TIMINGS."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    overlay = json.loads(json.dumps(OVERLAY))
    if device:
        overlay["generator"]["device"] = device
    (workdir / "config" / "demo_weights.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    timings = {}
    for kind, target in TARGETS.items():
        command = snakemake_command(workdir, target)
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        subprocess.run(command, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        timings[kind] = dict(command=" ".join(command), wall_s=round(time.monotonic() - start),
                             cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
        (workdir / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(workdir: Path, out: Path) -> dict:
    """Export both networks from a finished `workdir` to `out` and write `out`/provenance.json."""
    from morphotrust import __version__
    from morphotrust.generator.init_weights import export_from_run

    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((workdir / "config" / "demo_weights.yaml").read_text())
    resolution = config["subsets"]["resolution"]
    timings = json.loads((workdir / TIMINGS).read_text())
    results = workdir / "results"
    sources = {"autoencoder": results / "autoencoder", "flow": results / "generator" / "checkpoint.pt"}
    networks = {}
    for kind, source in sources.items():
        path = out / f"{kind}.safetensors"
        header = export_from_run(kind, source, results / "subsets" / "manifest.parquet", results / "subsets" / "stacks",
                                 resolution, path)
        networks[kind] = dict(file=path.name, sha256=sha256(path), bytes=path.stat().st_size, steps=header["steps"],
                              network=header["network"], **timings[kind])
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    provenance = dict(
        what="Weights the demo starts from (config/config.yaml generator.init_weights and "
             "generator.trained_autoencoder.init_weights), trained by the workflow's own rules on the SYNTHETIC demo "
             "data, from scratch, for many more steps than the demo trains.",
        regenerate=f".venv/bin/python scripts/train_demo_weights.py --out {out}",
        config="config/config.yaml of the commit below, with this overlay", overlay=overlay,
        networks=networks,
        training_data=dict(what="the seen arm's train split of the default demo (data.demo, config/conditions.yaml, "
                                "subsets)", **{k: v for k, v in header["training_data"].items() if k != "stain_means"}),
        library=dict(morphotrust=__version__, commit=commit.strip(), torch=torch.__version__,
                     python=platform.python_version()),
        machine=f"{cpu}, {platform.machine()}, torch threads per job: {config['generator']['threads']}")
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "results" / "demo_weights_run",
                        help="working directory of the long run (kept: rerunning resumes it)")
    parser.add_argument("--out", type=Path, default=REPO / "resources" / "demo_weights")
    parser.add_argument("--device", help="generator.device for the long run (e.g. cuda)")
    parser.add_argument("--export-only", action="store_true", help="export a finished --workdir again")
    args = parser.parse_args(argv)
    if not args.export_only:
        train(args.workdir, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    provenance = export(args.workdir, args.out)
    print(json.dumps(provenance["networks"], indent=2))


if __name__ == "__main__":
    main()
