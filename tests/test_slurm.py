"""The SLURM profile (workflow/profiles/slurm): GPU rules on the GPU partition, everything else on the CPU one;
and the demo workflow end to end through a real single-node SLURM cluster (scripts/local_slurm.sh)."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_helpers import SLURM_PROFILE, TINY_DEMO, make_workdir, run_through_slurm, small_slurm_profile, \
    workdir_with_results_of

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]


def load_profile():
    return yaml.safe_load(SLURM_PROFILE.read_text())


def partitions(profile):
    """(CPU partition, GPU partition) as the profile names them."""
    return profile["default-resources"]["slurm_partition"], profile["set-resources"]["train"]["slurm_partition"]


def workflow_rules():
    """{rule name: its text} for every rule and checkpoint in workflow/rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        pattern = r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^rule |^checkpoint |\Z)"
        for match in re.finditer(pattern, smk.read_text(), flags=re.M | re.S):
            rules[match.group(1)] = match.group(2)
    return rules


def test_profile_names_only_rules_that_exist():
    profile = load_profile()
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert named - set(workflow_rules()) == set(), "the SLURM profile names rules the workflow does not have"


def test_gpu_rules_and_only_they_go_to_the_gpu_partition():
    profile = load_profile()
    cpu, gpu = partitions(profile)
    assert cpu != gpu
    declares_gpu = {name for name, body in workflow_rules().items() if re.search(r"\bgpu\s*=", body)}
    assert {"train", "sample"} <= declares_gpu, "the generator rules must declare resources: gpu=1"
    # train and autoencoder take their GPU count from config generator.gpus / nodes (rule resources)
    from_config = {name for name, body in workflow_rules().items() if 'gpu=GENERATION["training_gpus"]' in body}
    assert from_config == {"train", "autoencoder"}
    for name, resources in profile["set-resources"].items():
        on_gpu = resources.get("slurm_partition", cpu) == gpu
        assert on_gpu == (name in declares_gpu), f"rule {name}: partition and GPU request disagree"
        if name in from_config:
            assert "gpu" not in resources, f"rule {name}: the profile's gpu would override generator.gpus"
            continue
        assert (resources.get("gpu", 0) == 1) == on_gpu, f"rule {name}: GPU partition without gpu: 1, or vice versa"
    assert declares_gpu <= set(profile["set-resources"]), "a GPU rule is missing from the SLURM profile"


def test_profile_routes_every_job_of_the_dag(tmp_path):
    """A dry run through the profile: what snakemake itself resolves as each job's partition and GPUs."""
    cpu, gpu = partitions(load_profile())
    workdir = make_workdir(tmp_path)
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--workflow-profile", str(SLURM_PROFILE.parent),
                             "--forceall", "-n"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    jobs = re.findall(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, flags=re.M)
    assert jobs, result.stdout[-4000:]
    for rule, resources in jobs:
        values = dict(item.split("=", 1) for item in resources.split(", "))
        wants_gpu = int(values.get("gpu", 0)) > 0
        assert values["slurm_partition"] == (gpu if wants_gpu else cpu), f"rule {rule}: {resources}"


# --- the demo through a real SLURM cluster ----------------------------------------------------------------
# The session's tiny demo (conftest.tiny_demo_run) runs through the local cluster and the profile whenever the
# cluster runs (slurm_cluster skips these tests where it cannot); these tests read what SLURM recorded of it.


def slurm_jobs(workdir):
    """SLURM's own record of every job started in `workdir` (rule, partition, state, GPUs), and the environment
    each job saw, from its log (the executor prints it with --verbose; --slurm-keep-successful-logs keeps it)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True)
    jobs = []
    for line in shown.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if Path(fields.get("WorkDir", "")).resolve() != workdir.resolve():
            continue
        gres = re.search(r"\bTresPer(?:Job|Node)=\S*gres:gpu(?::\w+)?:(\d+)", line)  # the GPUs it asked for
        logs = list((workdir / ".snakemake" / "slurm_logs").rglob(f"{fields['JobId']}.log"))
        environment = dict(re.findall(r"'(SLURM_JOB_PARTITION|CUDA_VISIBLE_DEVICES)': '([^']*)'",
                                      logs[0].read_text())) if logs else None
        jobs.append({
            "id": fields["JobId"],
            "rule": re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", fields["Comment"]).group(1),
            "partition": fields["Partition"],
            "state": fields["JobState"],
            "gpus": int(gres.group(1)) if gres else 0,
            "environment": environment,
        })
    return jobs


@pytest.mark.slow
@pytest.mark.slurm
def test_demo_through_slurm(slurm_cluster, tiny_demo_run):
    cpu, gpu = partitions(load_profile())
    workdir = tiny_demo_run
    log = (workdir.parent / "run.log").read_text()
    assert "Nothing to be done" not in log

    jobs = slurm_jobs(workdir)
    assert jobs, f"SLURM ran no job of the session's tiny demo (it ran locally?):\n{log[-4000:]}"
    submitted_rules = set(re.findall(r"^(?:rule|checkpoint) (\w+):$", log, flags=re.M))
    assert submitted_rules and {job["rule"] for job in jobs} == submitted_rules, log[-8000:]
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        assert job["partition"] == (gpu if job["gpus"] else cpu), job
        # Inside the job: the partition, and the node's one (fake) GPU for GPU jobs only.
        assert job["environment"]["SLURM_JOB_PARTITION"] == job["partition"], job
        visible = job["environment"].get("CUDA_VISIBLE_DEVICES")
        assert (len(visible.split(",")) if visible else 0) == job["gpus"], job

    # the GPU rules: the profile's gpu: 1 ones, and train / autoencoder, whose GPU count comes from generator.gpus
    gpu_rules = {name for name, body in workflow_rules().items() if re.search(r"\bgpu\s*=", body)}
    ran_on_gpu = {job["rule"] for job in jobs if job["gpus"]}
    assert "train" in ran_on_gpu and ran_on_gpu == submitted_rules & gpu_rules, ran_on_gpu
    assert (workdir / "results" / "validation" / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.slurm
def test_two_process_training_through_slurm(slurm_cluster, tiny_demo_run, tmp_path):
    """generator.gpus: 2 through the profile: the train job asks SLURM for 2 GPUs (the local cluster's two fake
    ones), and the rule runs 2 DDP processes under torchrun (gloo: there is no GPU behind the fake ones). Only
    training runs: its inputs are copied from the session's tiny demo."""
    workdir = workdir_with_results_of(tiny_demo_run, tmp_path / "work", ("data", "subsets", "autoencoder"),
                                      **{**TINY_DEMO, "generator.gpus": 2, "generator.steps": 6})
    run_through_slurm(workdir, small_slurm_profile(tmp_path / "profile"), "results/generator/checkpoint.pt")
    jobs = slurm_jobs(workdir)
    assert [job["rule"] for job in jobs] == ["train"], jobs  # the copied stages are not redone
    assert jobs[0]["state"] == "COMPLETED" and jobs[0]["gpus"] == 2, jobs
    assert jobs[0]["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1", jobs
    log = (workdir / "results" / "logs" / "generator" / "train.log").read_text()
    assert "torch.distributed.run --nproc-per-node=2" in log, log[-3000:]
    assert len(pd.read_csv(workdir / "results" / "generator" / "loss.csv")) == 6
