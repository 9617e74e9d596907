"""Data-parallel training (torch DDP) for the train and autoencoder stages: config generator.gpus x generator.nodes.

With gpus x nodes = 1 nothing here is used and training is one plain process, as before. Otherwise the stage
command (`morphotrust generator train ...`, the process Snakemake starts) re-runs itself under torchrun
(`python -m torch.distributed.run`), one worker per GPU (per CPU process on a machine without one); the workers
find each other through the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

What keeps W workers on the trajectory of one process: the per-process batch is generator.batch_size, the
global batch W x batch_size; the data order and every random draw of step s are drawn for the GLOBAL batch from
(seed, s), and rank r trains on its slice r of it. DDP averages the gradients, which is the gradient of the
global batch's mean loss, so the weights differ from one process with the global batch only by the order of
floating-point sums. The stop signals (SIGTERM / SIGUSR1) are all-reduced each step so all ranks stop at the
same step; rank 0 alone writes checkpoints, loss curves and logs; every rank resumes from the same checkpoint.

Several nodes (generator.nodes > 1, inside a SLURM allocation): the launcher starts one torchrun per node with
`srun --ntasks-per-node=1`, rendezvous (c10d) on the first host of SLURM_JOB_NODELIST at
generator.rendezvous_port, id SLURM_JOB_ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class Team:
    """This process's place among the training workers (rank 0 of 1 when not distributed)."""
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, batch: list[int]) -> list[int]:
        """This rank's slice of a global batch (the global batch size is a multiple of the team size)."""
        per_rank = len(batch) // self.size
        return batch[self.rank * per_rank: (self.rank + 1) * per_rank]

    def say(self, message: str) -> None:
        """Print to the log on rank 0 only (other ranks are quiet: one log per job)."""
        if self.is_main:
            print(message, file=sys.stderr)

    def mean(self, value: float, device) -> float:
        """Mean of a float over the ranks (the global batch's loss from the per-rank losses)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def any(self, flag: bool, device) -> bool:
        """True on every rank if it is true on any (the stop decision: all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int32, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def check_replicas_agree(self, module: torch.nn.Module, what: str, device) -> None:
        """Raise if `module`'s weights differ between ranks (DDP keeps them equal; a mismatch is a bug)."""
        if not self.distributed:
            return
        digest = torch.tensor(list(weights_digest(module)[:8]), dtype=torch.int32, device=device)
        gathered = [torch.zeros_like(digest) for _ in range(self.size)]
        dist.all_gather(gathered, digest)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"{what} weights differ between the {self.size} training ranks")


def weights_digest(module: torch.nn.Module) -> bytes:
    """sha256 of the module's state (names and exact values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def world_size(cfg: dict) -> int:
    return int(cfg.get("gpus", 1)) * int(cfg.get("nodes", 1))


def threads_per_process(threads: int) -> int:
    """A job's CPU threads shared among the training processes of its node (torchrun sets LOCAL_WORLD_SIZE)."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


@contextlib.contextmanager
def team_for(device: torch.device):
    """The process group of a torchrun worker (nccl on CUDA, gloo on CPU), torn down afterwards; a single
    process gets Team() and no process group."""
    if not under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Team(), device
        return
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Team(dist.get_rank(), dist.get_world_size()), device
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, team: Team, device: torch.device) -> torch.nn.Module:
    """The module to run forward/backward through: DDP across the team, the module itself for one process."""
    if not team.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ------------------------------------------------------------------------------------------------ launching

def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,11],cpu1" -> "gpu07" (zero padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[(\d+)[^\]]*\]([^,]*))?", nodelist.strip())
    if not match:
        raise InputError(f"cannot read the SLURM node list {nodelist!r}", where="SLURM_JOB_NODELIST",
                         expected="host names such as gpu[01-04] (generator.nodes > 1 runs only inside SLURM)")
    prefix, number, suffix = match.groups()
    return prefix if number is None else f"{prefix}{number}{suffix}"


def torchrun_command(module_argv: list[str], cfg: dict, environ=os.environ) -> list[str]:
    """The command that runs `python -m morphotrust <module_argv>` under torchrun with generator.gpus workers
    per node on generator.nodes nodes (through srun, one torchrun per node, when nodes > 1)."""
    gpus, nodes = int(cfg.get("gpus", 1)), int(cfg.get("nodes", 1))
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}"]
    if nodes == 1:
        # --standalone: a private rendezvous on a free local port (several jobs may share a node)
        run += ["--standalone", "--nnodes=1"]
    else:
        missing = [v for v in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES") if v not in environ]
        if missing:
            raise InputError(f"generator.nodes is {nodes} but {', '.join(missing)} is not set",
                             where="config generator.nodes",
                             expected="a run inside a SLURM allocation of that many nodes (workflow/profiles/slurm)")
        if int(environ["SLURM_JOB_NUM_NODES"]) != nodes:
            raise InputError(f"the SLURM job has {environ['SLURM_JOB_NUM_NODES']} node(s), config says {nodes}",
                             where="config generator.nodes", expected="the profile's nodes resource for this rule")
        endpoint = f"{first_host(environ['SLURM_JOB_NODELIST'])}:{int(cfg['rendezvous_port'])}"
        run = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--overlap", "--kill-on-bad-exit=1",
               *run, f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
               f"--rdzv-id={environ['SLURM_JOB_ID']}"]
    return [*run, "-m", "morphotrust", *module_argv]


def relaunch(module_argv: list[str], cfg: dict, interrupted_exit: int) -> None:
    """Run this stage command under torchrun and exit with its status (`interrupted_exit` after a stop signal).

    torchrun dies on SIGUSR1 (its default action), so it is started with SIGUSR1 ignored (the workers install
    their own handler); a SIGTERM / SIGUSR1 that reaches this process only is passed on to torchrun as SIGTERM,
    which torchrun forwards to every worker (they then agree on a step, rank 0 saves, all exit)."""
    command = torchrun_command(module_argv, cfg)
    print("launching " + " ".join(command[:8]) + " ...", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    stopped = []

    def forward(signum, _frame):
        stopped.append(signum)
        process.send_signal(signal.SIGTERM)

    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, forward)
    code = process.wait()
    raise SystemExit(interrupted_exit if stopped and code else code)
