"""A torchrun worker for tests/test_distributed.py: trains the toy generator data-parallel through the library
(morphotrust.generator.train with distributed.team_for) and writes rank<r>.json with its result and the
digest of its EMA weights, so the test can check that every rank holds the same EMA.

Usage: torchrun --nproc-per-node=W tests/ddp_worker.py train TOY OUT CONFIG_JSON [KILL_RANK KILL_STEP]
(KILL_*: that rank alone sends itself SIGTERM after that step, the real stop-signal path.)
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from morphotrust.generator.distributed import team_for, weights_digest
from morphotrust.generator.train import train

torch.set_num_threads(1)
toy, out, cfg = Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
kill_rank, kill_step = (int(v) for v in sys.argv[5:7]) if len(sys.argv) > 5 else (-1, -1)
rank = int(os.environ["RANK"])


def on_step(step):
    if rank == kill_rank and step == kill_step:
        os.kill(os.getpid(), signal.SIGTERM)


with team_for(torch.device("cpu")) as (team, device):
    models = {}
    result = train(toy / "manifest.parquet", toy / "stacks", out, cfg, cfg["resolution"], device, on_step=on_step,
                   team=team, models=models)
result["digest"] = weights_digest(models["ema"]).hex()
(out / f"rank{rank}.json").write_text(json.dumps(result))
