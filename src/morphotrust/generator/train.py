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

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .autoencoder import PIXELS, Codec, codec_for, file_fingerprint
from .data import (EpochBatches, TrainingImages, TrainingLatents, build_vocabularies, data_fingerprint,
                   ignore_stop_signals, read_images, read_manifest, resume_mismatch, training_rows)
from .init_weights import data_signature, load_init_weights
from .distributed import Team, wrap
from .model import ATTRIBUTES, build_network, interpolate, model_config, to_model_scale
from .presets import generator_name
from .runtime import CHECKPOINT_FORMAT, autocast, learning_rate, load_checkpoint, resolve_device, save_checkpoint, \
    save_or_stop, seeded_generator, stop_signals, write_loss_curve

def training_fingerprint(cfg: dict, config: dict, vocabularies: dict, data_id: str, codec: Codec = PIXELS) -> str:
    """What must be unchanged for a checkpoint to be resumed (not the step count: training may be extended).
    batch_size is the global batch: W processes x b and one process x W b share checkpoints."""
    keys = ("seed", "lr", "warmup", "batch_size", "grad_clip", "ema_decay", "weight_decay", "p_drop")
    latent = {} if codec.kind == "none" else dict(autoencoder=codec.describe())  # pixel fingerprints unchanged
    init = dict(init_weights=file_fingerprint(cfg["init_weights"])) if cfg["init_weights"] else {}
    return json.dumps(dict(model=config, vocabularies=vocabularies, data=data_id, **latent, **init,
                           **{k: cfg[k] for k in keys}), sort_keys=True)


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
