"""Training the conditional flow model on the seen arm's training split, restartably.

Every random draw of step s (noise, times, condition dropout) comes from a generator seeded with
(seed, s), and the data order from `EpochBatches`, also a function of (seed, step): a checkpoint holds
only model, EMA and optimizer state plus the step, and a resumed run reproduces an uninterrupted one
exactly on CPU.

SIGTERM and SIGUSR1 (SLURM preemption or time limit) make the loop finish the current step, save the
checkpoint and stop; the command then exits with status 75 so Snakemake marks the job incomplete, and a
rerun resumes from `checkpoints/latest.pt`.

generator.gpus x generator.nodes > 1 trains data-parallel under torchrun (distributed.py): generator.batch_size
per process, the same trajectory as one process with the global batch.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import InputError
from ..weights import PICKLE_CAUSE
from ..io import atomic_path, write_csv
from .autoencoder import KINDS as AUTOENCODERS
from .autoencoder import PIXELS, Codec, file_fingerprint, load_codec
from .data import (EpochBatches, TrainingImages, TrainingLatents, build_vocabularies, data_fingerprint,
                   ignore_stop_signals, read_images, read_manifest, resume_mismatch, training_rows)
from .init_weights import data_signature, load_init_weights
from .distributed import Team, relaunch, team_for, threads_per_process, under_torchrun, world_size, wrap
from .model import ATTRIBUTES, build_network, interpolate, model_config, to_model_scale

CHECKPOINT_FORMAT = "morphotrust-sit-1"
INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: try again later


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA device is available",
                         where="config generator.device", expected="auto, cpu, or a visible cuda device")
    return device


PRECISIONS = ("auto", "bf16", "fp32")


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


def generator_name(preset: str, autoencoder: str = "none") -> str:
    from .model import PRESETS

    latent = {"none": "", "trained": "-ae", "sd-vae": "-sdvae"}[autoencoder]
    if PRESETS[preset]["architecture"] == "unet":
        return f"morphotrust-{preset.lower()}{latent}"
    return f"morphotrust-sit-{preset.lower().replace('/', '')}{latent}"


def codec_for(cfg: dict, autoencoder, device) -> Codec:
    """The codec of config generator.autoencoder: the pixel identity for none, else the autoencoder stage's."""
    if cfg["autoencoder"] == "none":
        return PIXELS
    if autoencoder is None:
        raise InputError(f"generator.autoencoder is {cfg['autoencoder']} but no --autoencoder was given",
                         where="config generator.autoencoder", expected="the autoencoder rule's autoencoder.json")
    codec = load_codec(autoencoder, device)
    if codec.kind != cfg["autoencoder"]:
        raise InputError(f"autoencoder is {codec.kind}, config says {cfg['autoencoder']}", file=autoencoder,
                         expected="the output of the autoencoder rule run with this config (rerun it)")
    return codec


def checkpoint_codec(state: dict, autoencoder, device, checkpoint_path="checkpoint") -> Codec:
    """The codec a generator checkpoint was trained with, checked against the autoencoder file given."""
    described = state.get("autoencoder", PIXELS.describe())
    if described["kind"] == "none":
        return PIXELS
    if autoencoder is None:
        raise InputError(f"the checkpoint works on {described['kind']} latents but no --autoencoder was given",
                         file=checkpoint_path, expected="the autoencoder rule's autoencoder.json")
    codec = load_codec(autoencoder, device)
    if codec.describe() != described:
        raise InputError("the autoencoder differs from the one the generator was trained with", file=autoencoder,
                         expected=f"{described} (rerun the train rule)")
    return codec


def training_fingerprint(cfg: dict, config: dict, vocabularies: dict, data_id: str, codec: Codec = PIXELS) -> str:
    """What must be unchanged for a checkpoint to be resumed (not the step count: training may be extended).
    batch_size is the global batch: W processes x b and one process x W b share checkpoints."""
    keys = ("seed", "lr", "warmup", "batch_size", "grad_clip", "ema_decay", "weight_decay", "p_drop")
    latent = {} if codec.kind == "none" else dict(autoencoder=codec.describe())  # pixel fingerprints unchanged
    init = dict(init_weights=file_fingerprint(cfg["init_weights"])) if cfg["init_weights"] else {}
    return json.dumps(dict(model=config, vocabularies=vocabularies, data=data_id, **latent, **init,
                           **{k: cfg[k] for k in keys}), sort_keys=True)


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


def build_model(state: dict, weights: str = "ema") -> torch.nn.Module:
    model = build_network(state["model_config"])
    model.load_state_dict(state[weights])
    return model


def train(manifest_path, stacks_dir, out_dir, cfg: dict, resolution: int, device: str = "cpu",
          on_step=None, autoencoder=None, team: Team = Team(), models: dict | None = None) -> dict:
    """Train (or resume) and write checkpoint.pt, loss.csv and loss.png under `out_dir`.

    With `autoencoder` (the autoencoder stage's autoencoder.json; needed unless generator.autoencoder is none)
    the model learns the scaled latents of the training images, encoded once before the first step.
    Returns {"status": "finished" | "interrupted", "step": int}. `on_step(step)` is called after every
    optimizer step (progress hooks, tests). With a `team` of W > 1 torchrun workers (distributed.team_for) the
    model trains data-parallel on this rank's slice of the global batch of W x generator.batch_size; rank 0
    writes every file. A `models` dict is filled with this rank's "model" and "ema" (tests, benchmarks).
    """
    device = resolve_device(device)
    global_batch = cfg["batch_size"] * team.size
    out_dir = Path(out_dir)
    latest = out_dir / "checkpoints" / "latest.pt"
    manifest = read_manifest(manifest_path)
    rows = training_rows(manifest, manifest_path)
    vocabularies = build_vocabularies(rows)
    codec = codec_for(cfg, autoencoder, device)
    channels, latent_resolution, _ = codec.latent_shape(resolution)
    config = model_config(cfg["preset"], latent_resolution, {a: len(vocabularies[a]) for a in ATTRIBUTES},
                          channels=channels, prediction=cfg["prediction"])
    dataset = TrainingImages(stacks_dir, rows, vocabularies, resolution)
    images = read_images(stacks_dir, rows, resolution)
    if codec.kind != "none":
        dataset = TrainingLatents(dataset, codec.encode_uint8(images, progress=team.is_main, device=device))
    fingerprint = training_fingerprint(dict(cfg, batch_size=global_batch), config, vocabularies,
                                       data_fingerprint(rows, stacks_dir, resolution), codec)

    torch.manual_seed(cfg["seed"])  # weight initialisation
    model = build_network(config).to(device)
    if cfg["init_weights"]:
        model.load_state_dict(load_init_weights(cfg["init_weights"], "flow", config, data_signature(images, rows),
                                                vocabularies))
        team.say(f"starting from {cfg['init_weights']}")
    ema = build_network(config).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    losses: list[float] = []
    start = 0
    if latest.exists():  # every rank reads the same checkpoint
        state = load_checkpoint(latest)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            losses = state["losses"].tolist()
            start = int(state["step"])
            team.say(f"resuming from {latest} at step {start}")
            if start > cfg["steps"]:
                team.say(f"the checkpoint is already past generator.steps = {cfg['steps']}: keeping its {start} "
                         f"steps (delete {latest.parent} to train a shorter model from scratch)")
        else:
            team.say(f"not resuming {latest}: {resume_mismatch(state['fingerprint'], fingerprint)}; training from "
                     "scratch")
    forward = wrap(model, team, device)
    if models is not None:
        models.update(model=model, ema=ema)

    def checkpoint(step: int) -> dict:
        return dict(format=CHECKPOINT_FORMAT, model_config=config, vocabularies=vocabularies,
                    generator=generator_name(cfg["preset"], codec.kind), fingerprint=fingerprint, step=step,
                    seed=cfg["seed"], image_resolution=int(resolution), autoencoder=codec.describe(),
                    model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                    losses=torch.tensor(losses, dtype=torch.float64))

    steps = cfg["steps"]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=EpochBatches(len(dataset), global_batch, cfg["seed"], start, steps, team),
        num_workers=cfg["num_workers"], worker_init_fn=ignore_stop_signals if cfg["num_workers"] else None,
        pin_memory=device.type == "cuda")
    null = {a: config["vocab_sizes"][a] for a in ATTRIBUTES}
    step = start
    model.train()
    with stop_signals() as stop, tqdm(total=steps, initial=start, desc="train", unit="step", mininterval=5,
                                      file=sys.stderr, disable=not team.is_main) as bar:
        for images, cell, sirna in loader:
            loss = _train_step(forward, model, ema, optimizer, images, cell, sirna, step, cfg, null, device, team)
            losses.append(loss)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if on_step is not None:
                on_step(step)
            if save_or_stop(team, stop, step, cfg["checkpoint_every"], steps, latest, checkpoint, ema, device):
                return {"status": "interrupted", "step": step}
    if team.is_main:
        save_checkpoint(out_dir / "checkpoint.pt", checkpoint(step))
        write_loss_curve(losses, cfg, out_dir)
    team.barrier()
    return {"status": "finished", "step": step}


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


def _train_step(forward, model, ema, optimizer, images, cell, sirna, step, cfg, null, device,
                team: Team = Team()) -> float:
    """One optimizer step on this rank's slice of the global batch; returns the global batch's mean loss.
    `forward` is `model` itself or its DDP wrapper. The noise, times and dropout of step s are drawn for the
    whole global batch from (seed, s) and sliced, so they do not depend on the number of ranks."""
    rng = seeded_generator(cfg["seed"], step, device=device)
    x = images.to(device, non_blocking=True)
    x = to_model_scale(x) if x.dtype == torch.uint8 else x.float()  # pixels, or latents already scaled
    cell, sirna = cell.to(device), sirna.to(device)
    n = x.shape[0]
    total, mine = n * team.size, slice(team.rank * n, (team.rank + 1) * n)
    t = torch.rand(total, generator=rng, device=device)[mine]
    noise = torch.randn((total, *x.shape[1:]), generator=rng, device=device)[mine]
    # Classifier-free guidance: each attribute is replaced by its null token independently.
    drop_cell = torch.rand(total, generator=rng, device=device)[mine] < cfg["p_drop"]["cell_type"]
    drop_sirna = torch.rand(total, generator=rng, device=device)[mine] < cfg["p_drop"]["sirna_id"]
    cell = torch.where(drop_cell, null["cell_type"], cell)
    sirna = torch.where(drop_sirna, null["sirna_id"], sirna)
    x_t, velocity = interpolate(x, noise, t)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    with autocast(device, cfg["precision"]):
        predicted = forward(x_t, t, cell, sirna)
    loss = F.mse_loss(predicted.float(), velocity)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    optimizer.step()
    # EMA with the usual warm-up so short runs are not dominated by the random initial weights; from init weights
    # (an earlier run's EMA) none, so a short continuation keeps most of their average.
    decay = cfg["ema_decay"] if cfg["init_weights"] else min(cfg["ema_decay"], (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)
    return team.mean(float(loss.detach()), device)


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
    from .model import PREDICTIONS, PRESETS

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
    if cfg["sampler"] not in ("euler", "heun"):
        raise InputError(f"sampler {cfg['sampler']!r}", where="config generator.sampler", expected="euler | heun")
    return cfg


def add_autoencoder_argument(parser) -> None:
    parser.add_argument("--autoencoder", default=None,
                        help="results/autoencoder/autoencoder.json (generator.autoencoder trained | sd-vae)")


def add_common_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="the `generator` config section as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def cli(argv: list[str]) -> None:
    """`morphotrust generator train ...`"""
    import argparse

    parser = argparse.ArgumentParser(prog="morphotrust generator train",
                                     description="Train the conditional flow model on the seen arm (resumable).")
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--stacks-dir", required=True, help="results/subsets/stacks")
    parser.add_argument("--resolution", type=int, required=True, help="subsets.resolution")
    parser.add_argument("--out-dir", required=True, help="results/generator")
    add_common_arguments(parser)
    add_autoencoder_argument(parser)
    args = parser.parse_args(argv)
    cfg = parse_config(args.config)
    if world_size(cfg) > 1 and not under_torchrun():
        relaunch(["generator", "train", *argv], cfg, INTERRUPTED_EXIT)
    torch.set_num_threads(threads_per_process(args.threads))
    with team_for(resolve_device(cfg["device"])) as (team, device):
        result = train(args.manifest, args.stacks_dir, args.out_dir, cfg, args.resolution, device,
                       autoencoder=args.autoencoder, team=team)
    if result["status"] == "interrupted":
        raise SystemExit(INTERRUPTED_EXIT)
