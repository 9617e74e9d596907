"""Sampling the trained model: Euler / Heun ODE integration of the velocity field from noise (t = 0) to
data (t = 1), with classifier-free guidance, N samples per condition for every condition of both arms.

Sample k of condition c starts from noise drawn with seed (seed, crc32(c), k), and samples are batched
in fixed chunks of the full (condition, k) list, so every sample is the same whichever conditions were
finished by an earlier, interrupted run. A condition is finished when its part file
(`parts/<condition>.parquet`) exists; the manifest is assembled from the parts at the end.

With generator.sample_shards = S > 1 the conditions are split into S contiguous groups (morphotrust.shards),
each sampled by its own job (`--shard i --shards S`, parts under parts/shard-i-of-S/, its rows written to one
shard table), and `--merge` assembles the manifest, grid and summary from the shard tables. A shard computes
the same fixed chunks as the unsharded run (keeping its own conditions' samples), so the images and manifest
are byte-identical on CPU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..images import IMAGE_PROBLEM, composite_rgb, nonfinite_problem, read_site, write_site
from ..io import atomic_path, read_json, write_json, write_parquet
from ..shards import shard_conditions
from .data import conditions_to_sample, encode, read_images, read_manifest
from .model import to_uint8
from .presets import SAMPLERS
from .runtime import autocast, load_checkpoint, resolve_device, seeded_generator
from .autoencoder import checkpoint_codec
from .train import build_model

def condition_key(condition: str) -> str:
    """File-name-safe form of a condition, e.g. HUVEC:1138 -> HUVEC_1138."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", condition.replace(":", "_"))


def sample_seed(seed: int, condition: str, k: int) -> list[int]:
    return [int(seed), zlib.crc32(condition.encode()), int(k)]


def initial_noise(seeds: list[list[int]], shape: tuple) -> torch.Tensor:
    """One standard-normal image per seed, drawn on CPU so CPU and GPU runs start from the same noise."""
    return torch.stack([torch.randn(shape, generator=seeded_generator(*s)) for s in seeds])


def guided_velocity(model, x, t, cell, sirna, guidance: float, hidden_block=None):
    """v = v_null + w (v_cond - v_null), with both attributes set to their null tokens for v_null.

    Returns (velocity, pooled hidden state of the conditional pass or None).
    """
    if guidance == 1.0:
        out = model(x, t, cell, sirna, hidden_block=hidden_block)
        v, pooled = out if hidden_block is not None else (out, None)
        return v.float(), pooled
    n = x.shape[0]
    null_cell = torch.full_like(cell, model.null_index("cell_type"))
    null_sirna = torch.full_like(sirna, model.null_index("sirna_id"))
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cell, null_cell]), torch.cat([sirna, null_sirna]),
                hidden_block=hidden_block)
    v, pooled = out if hidden_block is not None else (out, None)
    v = v.float()
    v_cond, v_null = v[:n], v[n:]
    return v_null + guidance * (v_cond - v_null), (pooled[:n] if pooled is not None else None)


@torch.no_grad()
def integrate(model, noise, cell, sirna, *, steps: int, method: str = "euler", guidance: float = 1.0,
              check_steps=(), hidden_block: int | None = None, on_check=None, precision: str = "auto"):
    """Integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 with `steps` uniform steps.

    At every step i in `check_steps`, `on_check(i, t_i, pooled_hidden, alive_indices)` returns a boolean
    keep-mask over the samples still alive; the others are abandoned there (no further model evaluations).
    Returns (final images of the survivors, their indices, abandoned_at (-1 = finished), evaluations per sample).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; expected one of {SAMPLERS}")
    device = next(model.parameters()).device
    x = noise.to(device)
    cell, sirna = cell.to(device), sirna.to(device)
    alive = np.arange(x.shape[0])
    abandoned_at = np.full(x.shape[0], -1)
    evaluations = np.zeros(x.shape[0], dtype=np.int64)
    times = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    checks = set(check_steps) if on_check is not None else set()
    for i in range(steps):
        t0, dt = times[i], times[i + 1] - times[i]
        check = i in checks
        tt = torch.full((len(alive),), t0, device=device)
        with autocast(device, precision):
            v, pooled = guided_velocity(model, x, tt, cell, sirna, guidance, hidden_block if check else None)
        evaluations[alive] += 1
        if check:
            keep = np.asarray(on_check(i, t0, pooled, alive), dtype=bool)
            if not keep.all():
                abandoned_at[alive[~keep]] = i
                keep_t = torch.from_numpy(keep).to(device)
                x, v, cell, sirna, alive = x[keep_t], v[keep_t], cell[keep_t], sirna[keep_t], alive[keep]
            if len(alive) == 0:
                break
        if method == "euler":
            x = x + dt * v
        else:  # Heun: average the slopes at both ends of the step
            x_end = x + dt * v
            with autocast(device, precision):
                v_end, _ = guided_velocity(model, x_end, torch.full((len(alive),), times[i + 1], device=device), cell, sirna,
                                           guidance)
            evaluations[alive] += 1
            x = x + 0.5 * dt * (v + v_end)
    return x.float(), alive, abandoned_at, evaluations


def sampling_plan(conditions: pd.DataFrame, codes: dict, n_per_condition: int, seed: int) -> pd.DataFrame:
    """One row per sample to generate, in the fixed order that defines the batches."""
    rows = []
    for i, c in enumerate(conditions.itertuples(index=False)):
        for k in range(n_per_condition):
            rows.append(dict(condition_row=i, Metadata_condition=c.Metadata_condition, k=k,
                             cell=int(codes["cell_type"][i]), sirna=int(codes["sirna_id"][i]),
                             seed=sample_seed(seed, c.Metadata_condition, k)))
    return pd.DataFrame(rows)


def load_sampler_model(checkpoint_path, device, autoencoder=None):
    """(EMA model, checkpoint state, codec between images and the model's latents)."""
    state = load_checkpoint(checkpoint_path)
    model = build_model(state, "ema").to(device).eval()
    return model, state, checkpoint_codec(state, autoencoder, device, checkpoint_path)


def image_resolution(state: dict) -> int:
    """Pixels of the images the checkpoint's model generates (its model_config resolution is the latent's)."""
    return int(state.get("image_resolution", state["model_config"]["resolution"]))


def latent_noise_shape(model) -> tuple[int, int, int]:
    side = model.config["resolution"]
    return model.config["channels"], side, side


def sampling_settings(state: dict, cfg: dict) -> dict:
    """What the samples depend on besides their condition (a change discards earlier parts)."""
    return dict(checkpoint=state["fingerprint"], checkpoint_step=int(state["step"]), sampler=cfg["sampler"],
                sampling_steps=cfg["sampling_steps"], guidance_scale=cfg["guidance_scale"], seed=cfg["seed"],
                samples_per_condition=cfg["samples_per_condition"], sampling_batch_size=cfg["sampling_batch_size"],
                precision=cfg["precision"])


def run_sampling(manifest_path, stacks_dir, checkpoint_path, out_dir, cfg: dict, device: str = "cpu",
                 autoencoder=None, shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Generate every condition's samples (skipping finished ones), then the manifest, grid and summary.
    With `shard` (i, S), S > 1: only condition group i, and only its rows are returned (no manifest, grid or
    summary: `merge_shards` writes them)."""
    device = resolve_device(device)
    out_dir = Path(out_dir)
    manifest = read_manifest(manifest_path)
    model, state, codec = load_sampler_model(checkpoint_path, device, autoencoder)
    resolution = image_resolution(state)
    name = state["generator"]
    conditions = conditions_to_sample(manifest)
    codes = encode(conditions, state["vocabularies"], manifest_path)
    n = cfg["samples_per_condition"]
    plan = sampling_plan(conditions, codes, n, cfg["seed"])
    index, shards = shard
    mine = set(shard_conditions(conditions["Metadata_condition"], index, shards))

    # one folder per shard: shards never share a settings file or delete each other's parts
    parts_dir = out_dir / "parts" / (f"shard-{index}-of-{shards}" if shards > 1 else "")
    settings = sampling_settings(state, cfg)
    settings_path = parts_dir / "settings.json"
    if settings_path.exists() and read_json(settings_path) != settings:
        print("sampling settings or checkpoint changed: discarding earlier samples", file=sys.stderr)
        shutil.rmtree(parts_dir)
    write_json(settings, settings_path)

    def part_path(condition):
        return parts_dir / f"{condition_key(condition)}.parquet"

    batch = cfg["sampling_batch_size"]
    chunks = [plan.iloc[s: s + batch] for s in range(0, len(plan), batch)]
    chunks = [c for c in chunks if mine & set(c["Metadata_condition"])]
    todo = [c for c in chunks if not all(part_path(x).exists() for x in mine & set(c["Metadata_condition"]))]
    print(f"{len(mine)} conditions x {n} samples{f' (shard {index} of {shards})' if shards > 1 else ''}; "
          f"{len(chunks) - len(todo)} of {len(chunks)} batches done earlier", file=sys.stderr)
    written: dict[str, set] = {}
    problems: dict[tuple, str] = {}  # (condition, k): pixels that were not numbers
    for chunk in tqdm(todo, desc="sample", unit="batch", file=sys.stderr, mininterval=5):
        noise = initial_noise(chunk["seed"].tolist(), latent_noise_shape(model))
        latents, _, _, _ = integrate(model, noise, torch.tensor(chunk["cell"].to_numpy()),
                                    torch.tensor(chunk["sirna"].to_numpy()), steps=cfg["sampling_steps"],
                                    method=cfg["sampler"], guidance=cfg["guidance_scale"],
                                    precision=cfg["precision"])
        decoded = codec.decode(latents)
        images = to_uint8(decoded).cpu().numpy()
        for row, image, raw in zip(chunk.itertuples(index=False), images, decoded.float().cpu().numpy()):
            if row.Metadata_condition in mine:  # a chunk at a shard boundary also holds the next shard's
                write_site(image_path(out_dir, name, row.Metadata_condition, row.k), image)
                written.setdefault(row.Metadata_condition, set()).add(row.k)
                problems[row.Metadata_condition, row.k] = nonfinite_problem(raw)
        for condition in mine & set(chunk["Metadata_condition"]):
            if len(written[condition]) == n and not part_path(condition).exists():
                info = conditions[conditions["Metadata_condition"] == condition].iloc[0]
                rows = condition_rows(info, out_dir, name, n, cfg["seed"])
                rows[IMAGE_PROBLEM] = [problems[condition, k] for k in range(n)]
                write_parquet(rows, part_path(condition))

    ordered = [c for c in conditions["Metadata_condition"] if c in mine]
    generated = pd.concat([pd.read_parquet(part_path(c)) for c in ordered], ignore_index=True)
    if shards > 1:
        return generated
    write_sampling_outputs(generated, manifest, stacks_dir, out_dir, state, settings)
    return generated


def merge_shards(manifest_path, stacks_dir, checkpoint_path, shard_tables, out_dir, cfg: dict) -> pd.DataFrame:
    """The manifest, summary and grid of a sharded run from its shard tables (in shard order): the same files
    as the unsharded run."""
    generated = pd.concat([pd.read_parquet(p) for p in shard_tables], ignore_index=True)
    state = load_checkpoint(checkpoint_path)
    write_sampling_outputs(generated, read_manifest(manifest_path), stacks_dir, Path(out_dir), state,
                           sampling_settings(state, cfg))
    return generated


def write_sampling_outputs(generated, manifest, stacks_dir, out_dir: Path, state: dict, settings: dict) -> None:
    name, resolution = state["generator"], image_resolution(state)
    write_parquet(generated, out_dir / "manifest.parquet")
    summary = condition_dependence(generated, manifest, stacks_dir, resolution)
    summary.update(generator=name, n_conditions=int(generated["Metadata_condition"].nunique()),
                   n_samples=len(generated), **settings)
    write_json(summary, out_dir / "summary.json")
    write_grid(generated, manifest, stacks_dir, resolution, out_dir / "grid.png", name)
    print(json.dumps({k: summary[k] for k in ("condition_mean_r", "condition_mean_r_centred")}), file=sys.stderr)


def sample_id(name: str, condition: str, k: int) -> str:
    return f"{name}-{condition_key(condition)}-{k:03d}"


def image_path(out_dir: Path, name: str, condition: str, k: int) -> Path:
    return out_dir / "images" / condition_key(condition) / f"{sample_id(name, condition, k)}.tif"


def condition_rows(info, out_dir: Path, name: str, n: int, seed: int) -> pd.DataFrame:
    """Generated-manifest rows (docs/design.md) of one condition."""
    condition = info["Metadata_condition"]
    return pd.DataFrame({
        "Metadata_sample_id": [sample_id(name, condition, k) for k in range(n)],
        "Metadata_image_path": [str(image_path(out_dir, name, condition, k)) for k in range(n)],
        "Metadata_cell_type": str(info["Metadata_cell_type"]),
        "Metadata_sirna_id": int(info["Metadata_sirna_id"]),
        "Metadata_sirna": str(info["Metadata_sirna"]),
        "Metadata_condition": condition,
        "Metadata_arm": str(info["Metadata_arm"]),
        "Metadata_source": "generated",
        "Metadata_generator": name,
        "Metadata_sample_index": np.arange(n, dtype=np.int64),
        "Metadata_seed": seed,
    })


def reference_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Real sites to compare with: the held-out evaluation split of each listed condition."""
    return manifest[manifest["Metadata_arm"].isin(["seen", "unseen"]) & (manifest["Metadata_split"] == "evaluation")]


def condition_dependence(generated: pd.DataFrame, manifest: pd.DataFrame, stacks_dir, resolution: int) -> dict:
    """Do generated images follow their condition? Pearson r between per-condition, per-channel mean
    intensities of generated and real (evaluation split) sites; `_centred` after removing each channel's
    mean over conditions, so only differences between conditions count."""
    real = reference_rows(manifest)
    conditions = [c for c in generated["Metadata_condition"].unique() if c in set(real["Metadata_condition"])]
    if len(conditions) < 2:
        return dict(condition_mean_r=None, condition_mean_r_centred=None, per_condition=[])
    real_images = read_images(stacks_dir, real, resolution)
    gen_means, real_means, per_condition = [], [], []
    for condition in conditions:
        paths = generated.loc[generated["Metadata_condition"] == condition, "Metadata_image_path"]
        g = np.mean([read_site(p).reshape(6, -1).mean(axis=1) for p in paths], axis=0)
        r = real_images[(real["Metadata_condition"] == condition).to_numpy()].reshape(-1, 6, resolution ** 2)
        r = r.mean(axis=(0, 2))
        gen_means.append(g)
        real_means.append(r)
        per_condition.append(dict(condition=condition, generated_channel_means=g.round(3).tolist(),
                                  real_channel_means=r.round(3).tolist()))
    g, r = np.array(gen_means), np.array(real_means)

    def pearson(a, b):
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        return float((a @ b) / np.sqrt((a @ a) * (b @ b) + 1e-12))

    return dict(condition_mean_r=pearson(g, r), condition_mean_r_centred=pearson(g - g.mean(0), r - r.mean(0)),
                per_condition=per_condition)


def write_grid(generated: pd.DataFrame, manifest: pd.DataFrame, stacks_dir, resolution: int, path, name: str,
               per_row: int = 4) -> None:
    """PNG: one row per condition, `per_row` generated sites, a gap, then `per_row` real evaluation sites."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = reference_rows(manifest)
    conditions = list(generated["Metadata_condition"].unique())
    r, gap = resolution, max(resolution // 4, 2)
    canvas = np.full((len(conditions) * (r + 2), 2 * per_row * (r + 2) + gap, 3), 255, dtype=np.uint8)
    labels = []
    for row, condition in enumerate(conditions):
        gen = generated[generated["Metadata_condition"] == condition].head(per_row)
        tiles = [composite_rgb(read_site(p)) for p in gen["Metadata_image_path"]]
        real_rows = real[real["Metadata_condition"] == condition].head(per_row)
        real_tiles = [composite_rgb(im) for im in read_images(stacks_dir, real_rows, resolution)] if len(real_rows) else []
        y = row * (r + 2) + 1
        for j, tile in enumerate(tiles):
            canvas[y: y + r, j * (r + 2) + 1: j * (r + 2) + 1 + r] = tile
        for j, tile in enumerate(real_tiles):
            x = per_row * (r + 2) + gap + j * (r + 2) + 1
            canvas[y: y + r, x: x + r] = tile
        labels.append(f"{condition} ({gen['Metadata_arm'].iloc[0]})")
    height = max(2.0, len(conditions) * 0.9)
    fig, ax = plt.subplots(figsize=(2 * per_row * 0.9 + 2.5, height + 0.6))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([i * (r + 2) + r / 2 for i in range(len(conditions))], labels, fontsize=8)
    ax.set_xticks([per_row * (r + 2) / 2, per_row * (r + 2) + gap + per_row * (r + 2) / 2],
                  [f"generated ({name})", "real (evaluation split)"], fontsize=9)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
