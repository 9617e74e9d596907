"""What the generator's jobs share at run time, whatever they train or sample: the device and its number
precision, seeded random generators, stop signals (SLURM preemption) with checkpoint-or-stop, the loss curve,
and the `generator` config section passed on the command line. Imported by autoencoder.py, train.py, sample.py
and the generation_trust package; imports none of them (no import cycle).
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..io import atomic_path, write_csv
from ..weights import PICKLE_CAUSE
from .distributed import Team
from .presets import AUTOENCODERS, PRECISIONS, PREDICTIONS, PRESETS, SAMPLERS, generator_name

INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: try again later
CHECKPOINT_FORMAT = "morphotrust-sit-1"  # the flow model's checkpoint (train.py)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA device is available",
                         where="config generator.device", expected="auto, cpu, or a visible cuda device")
    return device


def autocast(device: torch.device, precision: str = "auto"):
    """auto: bf16 autocast on a GPU, full precision on CPU (bf16 matmuls are slow there and change results).
    bf16 forces bf16 autocast, on CPU too (a cheap check of the GPU's number path); fp32 turns it off (GPUs
    without bf16, e.g. V100)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def seeded_generator(seed: int, *keys: int, device="cpu") -> torch.Generator:
    """A torch generator seeded from (seed, *keys) through numpy's SeedSequence (well-mixed, stable)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return generator


@contextlib.contextmanager
def stop_signals():
    """While the block runs, SIGTERM / SIGUSR1 only set stop["signal"] (the loop saves and stops); the previous
    handlers are restored afterwards."""
    stop = {"signal": None}

    def request_stop(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def learning_rate(step: int, cfg: dict) -> float:
    """Linear warm-up over `warmup` steps, then constant (as SiT)."""
    return cfg["lr"] * min(1.0, (step + 1) / max(cfg["warmup"], 1))


def save_checkpoint(path, state: dict) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError("generator checkpoint not found", file=path, expected="the output of the train rule")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        cause = PICKLE_CAUSE if "Weights only load failed" in str(error) else str(error).splitlines()[0][:160]
        raise InputError(f"cannot read the checkpoint: {cause}", file=path,
                         expected="a morphotrust generator checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a morphotrust generator checkpoint", file=path, expected=f"format {CHECKPOINT_FORMAT}")
    return state


def save_or_stop(team: Team, stop: dict, step: int, every: int, steps: int, latest: Path, state, replica,
                 device) -> bool:
    """After an optimizer step: agree on stopping (a stop signal on any rank stops every rank at this step);
    at a checkpoint step or a stop, check that `replica` (the EMA, the autoencoder) is equal on every rank and
    save `state(step)` to `latest` on rank 0. True when the loop must stop."""
    stopping = team.any(stop["signal"] is not None, device)
    if stopping or step % every == 0 or step == steps:
        team.check_replicas_agree(replica, type(replica).__name__, device)
        if team.is_main:
            save_checkpoint(latest, state(step))
    if stopping:
        team.barrier()  # the others wait for rank 0's checkpoint before they exit
        team.say(f"{stop['signal'] or 'a stop signal on another rank'} received: saved {latest} at step {step}; "
                 "rerun to resume")
    return stopping


def write_loss_curve(losses: list[float], cfg: dict, out_dir: Path, ylabel: str = "velocity MSE",
                     title: str | None = None) -> None:
    steps = np.arange(1, len(losses) + 1)
    loss = np.asarray(losses, dtype=float)
    smooth = pd.Series(loss).ewm(alpha=0.02).mean().to_numpy()
    write_csv(pd.DataFrame({"step": steps, "loss": loss, "loss_smoothed": smooth,
                            "lr": [learning_rate(s - 1, cfg) for s in steps]}), out_dir / "loss.csv")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, color="0.75", lw=0.6, label="loss per step")
    ax.plot(steps, smooth, color="C0", lw=1.5, label="smoothed")
    ax.set(xlabel="training step", ylabel=ylabel, yscale="log",
           title=title or f"{generator_name(cfg['preset'])} training loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_dir / "loss.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


REQUIRED_KEYS = ("autoencoder", "trained_autoencoder", "sd_vae", "init_weights", "preset", "prediction", "precision",
                 "steps", "lr", "warmup", "batch_size", "grad_clip",
                 "ema_decay", "weight_decay", "p_drop", "guidance_scale", "sampler", "sampling_steps",
                 "samples_per_condition", "sampling_batch_size", "seed", "checkpoint_every", "num_workers", "device",
                 "translator", "generation_trust")


def parse_config(text: str) -> dict:
    """The `generator` config section, passed as JSON by the rules (defaults filled by the workflow schema)."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON: {error}", where="--config", expected="the generator config section") from None
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise InputError(f"missing key(s) {', '.join(missing)}", where="config generator",
                         expected="every key of workflow/schemas/config.schema.yaml, generator section")
    if cfg["preset"] not in PRESETS:
        raise InputError(f"preset {cfg['preset']!r}", where="config generator.preset", expected=" | ".join(PRESETS))
    if cfg["autoencoder"] not in AUTOENCODERS:
        raise InputError(f"autoencoder {cfg['autoencoder']!r}", where="config generator.autoencoder",
                         expected=" | ".join(AUTOENCODERS))
    if cfg["prediction"] not in ("preset", *PREDICTIONS):
        raise InputError(f"prediction {cfg['prediction']!r}", where="config generator.prediction",
                         expected="preset | " + " | ".join(PREDICTIONS))
    if cfg["precision"] not in PRECISIONS:
        raise InputError(f"precision {cfg['precision']!r}", where="config generator.precision",
                         expected=" | ".join(PRECISIONS))
    if cfg["sampler"] not in SAMPLERS:
        raise InputError(f"sampler {cfg['sampler']!r}", where="config generator.sampler",
                         expected=" | ".join(SAMPLERS))
    return cfg
