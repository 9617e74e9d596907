"""Data-parallel training (morphotrust.generator.distributed) with the gloo backend: 2 CPU processes under
torchrun, on the toy data of test_generator. Each torchrun start costs a few seconds of imports per process."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from morphotrust.errors import InputError
from morphotrust.generator.autoencoder import train_autoencoder
from morphotrust.generator.distributed import Team, first_host, torchrun_command, weights_digest
from morphotrust.generator.runtime import load_checkpoint
from morphotrust.generator.train import build_model, train
from test_generator import RES, config, make_toy_subsets

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
# 12 training sites; 2 ranks x 3 = a global batch of 6, so 8 steps cross epoch boundaries
PER_RANK, STEPS = 3, 8


def ddp_config(**overrides) -> dict:
    return config(**{**dict(steps=STEPS, batch_size=PER_RANK, checkpoint_every=3, resolution=RES), **overrides})


def torchrun(stage: str, toy: Path, out: Path, cfg: dict, kill=None, log=False):
    """Run tests/ddp_worker.py on 2 gloo processes; the per-rank results (and the log)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
               str(WORKER), stage, str(toy), str(out), json.dumps(cfg), *map(str, kill or ())]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return (ranks, run.stderr) if log else ranks


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_subsets(tmp_path_factory.mktemp("subsets"))


@pytest.fixture(scope="module")
def two_processes(toy, tmp_path_factory):
    """An uninterrupted 2-process run (shared by the equivalence and the resume tests)."""
    out = tmp_path_factory.mktemp("ddp")
    return out, torchrun("train", toy, out, ddp_config())


def test_team_slices_a_global_batch_into_disjoint_parts():
    batch = list(range(12))
    parts = [Team(r, 3).share(batch) for r in range(3)]
    assert sum(parts, []) == batch
    assert Team().share(batch) == batch


def test_two_processes_follow_one_process_with_the_global_batch(two_processes, toy, tmp_path):
    out, ranks = two_processes
    assert ranks[0]["status"] == ranks[1]["status"] == "finished" and ranks[0]["step"] == STEPS
    # EMA identical across ranks, and the one rank 0 saved.
    saved = load_checkpoint(out / "checkpoint.pt")
    assert ranks[0]["digest"] == ranks[1]["digest"] == weights_digest(build_model(saved, "ema")).hex()

    single = tmp_path / "single"
    train(toy / "manifest.parquet", toy / "stacks", single, ddp_config(batch_size=2 * PER_RANK), RES)
    one = load_checkpoint(single / "checkpoint.pt")
    assert one["fingerprint"] == saved["fingerprint"]  # the same run: checkpoints are interchangeable
    # The data, noise, times and dropout are identical; only the order of floating-point sums differs (the
    # gradient of the mean over 6 vs the mean of two means over 3, gloo's all-reduce). Measured on this machine:
    # loss curves differ by at most ~1e-6 relative over the 8 steps, weights by ~1e-6 absolute. Tolerances are
    # 1e-4 (relative loss) and 1e-4 (absolute weight): 100x margin, still far below the step-to-step changes
    # (the loss moves by > 10 % per step here, so a wrong data slice or a wrong noise draw fails at once).
    difference = np.abs(saved["losses"].numpy() / one["losses"].numpy() - 1)
    print(f"max relative loss difference 2 x {PER_RANK} vs 1 x {2 * PER_RANK}: {difference.max():.2e}")
    assert difference.max() < 1e-4, difference
    weights = max(float((saved["ema"][key] - value).abs().max()) for key, value in one["ema"].items())
    print(f"max absolute EMA weight difference: {weights:.2e}")
    assert weights < 1e-4
    curve = pd.read_csv(out / "loss.csv")
    assert len(curve) == STEPS and np.allclose(curve["loss"], saved["losses"].numpy())


def test_a_stop_signal_on_one_rank_stops_both_and_the_resumed_run_equals_the_uninterrupted_one(two_processes, toy,
                                                                                               tmp_path):
    whole, _ = two_processes
    out = tmp_path / "split"
    # SIGTERM on rank 1 only after step 5: the stop decision is all-reduced, so rank 0 stops there too and saves.
    ranks = torchrun("train", toy, out, ddp_config(), kill=(1, 5))
    assert ranks == [{"status": "interrupted", "step": 5, "digest": ranks[0]["digest"]}] * 2
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 5
    assert not (out / "checkpoint.pt").exists()
    resumed, log = torchrun("train", toy, out, ddp_config(), log=True)
    assert resumed[0]["status"] == "finished" and resumed[0]["digest"] == resumed[1]["digest"]
    assert log.count("resuming from") == 1  # both ranks resume, rank 0 alone logs
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert torch.equal(a["losses"], b["losses"])
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_autoencoder_stage_command_with_two_gpus_follows_one_process_with_the_global_batch(toy, tmp_path):
    """The stage command itself: generator.gpus: 2 relaunches it under torchrun (2 gloo processes)."""
    cfg = config(autoencoder="trained", gpus=2)
    cfg["trained_autoencoder"] = dict(cfg["trained_autoencoder"], steps=4, batch_size=PER_RANK, width=4,
                                      checkpoint_every=2)
    run = subprocess.run([sys.executable, "-m", "morphotrust", "generator", "autoencoder", "--manifest",
                          str(toy / "manifest.parquet"), "--stacks-dir", str(toy / "stacks"), "--resolution",
                          str(RES), "--out-dir", str(tmp_path / "ddp"), "--config", json.dumps(cfg)],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "launching" in run.stderr and (tmp_path / "ddp" / "autoencoder.json").is_file()
    cfg["trained_autoencoder"]["batch_size"] = 2 * PER_RANK
    single = train_autoencoder(toy / "manifest.parquet", toy / "stacks", tmp_path / "one", cfg, RES)
    two = pd.read_csv(tmp_path / "ddp" / "loss.csv")["loss"].to_numpy()
    one = pd.read_csv(tmp_path / "one" / "loss.csv")["loss"].to_numpy()
    print(f"autoencoder: max relative loss difference {np.abs(two / one - 1).max():.2e}")
    assert len(two) == 4 and np.abs(two / one - 1).max() < 1e-4  # same reasoning and margin as the generator's
    from safetensors.torch import load_file

    # The two networks are compared as functions: a conv bias that feeds a per-channel GroupNorm (width 4 here) has
    # a gradient that is zero but for rounding, which Adam turns into steps of up to lr in either direction, so
    # such biases differ between runs while the outputs do not.
    ddp = copy.deepcopy(single["network"])
    ddp.load_state_dict(load_file(str(tmp_path / "ddp" / "autoencoder.safetensors")))
    images = torch.rand(4, 6, RES, RES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ddp(images), single["network"](images), rtol=0, atol=1e-4)


def test_multi_node_launch_needs_a_slurm_allocation_and_uses_its_first_host():
    cfg = ddp_config(gpus=4, nodes=2, rendezvous_port=29611)
    with pytest.raises(InputError, match="SLURM_JOB_ID"):
        torchrun_command(["generator", "train"], cfg, environ={})
    with pytest.raises(InputError, match="1 node"):
        torchrun_command(["generator", "train"], cfg, environ=dict(SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n1",
                                                                   SLURM_JOB_NUM_NODES="1"))
    slurm = dict(SLURM_JOB_ID="42", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_NUM_NODES="2")
    multi = torchrun_command(["generator", "train"], cfg, environ=slurm)
    assert multi[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--overlap", "--kill-on-bad-exit=1"]
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu07:29611",
            "--rdzv-id=42"} <= set(multi)
    assert [first_host(n) for n in ("n1,n2", "a[3,5-6]", "rack1-[002-004].x,b1")] == ["n1", "a3", "rack1-002.x"]
    single = torchrun_command(["generator", "train", "--x"], ddp_config(gpus=4))
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone", "--nnodes=1",
                          "-m", "morphotrust", "generator", "train", "--x"]
