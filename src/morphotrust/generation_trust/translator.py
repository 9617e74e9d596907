"""The translator g: pooled hidden state of one generator block at time t -> encoder feature space Φ.

Training pairs come from real training images noised with the interpolant the generator was trained with
(`model.interpolate`: x_t = t x + (1 - t) ε) at several times t, passed through the (EMA) generator with their
own condition; the target is Φ of the clean image, L2-normalised as the trust score uses it. g's output is
L2-normalised too, and the loss is ‖g(h, t) − y‖², i.e. 2 − 2 cos. A tenth of the images (all their t) is
held out to report generalisation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from ..errors import InputError
from ..weights import architecture_problem, read_tensors
from ..io import atomic_path, read_json, write_json
from ..generator.model import interpolate, to_model_scale
from ..generator.runtime import autocast, seeded_generator


class Translator(nn.Module):
    """Small MLP (LayerNorm on the hidden state, t appended) whose output is L2-normalised."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out_dim
        self.norm = nn.LayerNorm(in_dim)
        self.net = nn.Sequential(nn.Linear(in_dim + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, pooled, t):
        x = torch.cat([self.norm(pooled.float()), t.float().view(-1, 1)], dim=1)
        return F.normalize(self.net(x), dim=1)


def normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@torch.no_grad()
def noised_hidden(model, images_uint8: np.ndarray, cell: np.ndarray, sirna: np.ndarray, t: float, block: int,
                  seed: int, key: int = 0, batch_size: int = 64, progress: bool = False,
                  precision: str = "auto", codec=None) -> np.ndarray:
    """Pooled block-`block` hidden states of real images noised to time t (the training interpolant), with
    their own condition. Noise of image i is drawn with seed (seed, key, i), so results do not depend on
    the batch size. With a latent model's `codec` the images are encoded first (the model's input space)."""
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(images_uint8), batch_size)
    for s in tqdm(starts, desc=f"hidden t={t:.2f}", unit="batch", disable=not progress, file=sys.stderr):
        x = to_model_scale(torch.from_numpy(np.asarray(images_uint8[s: s + batch_size]))).to(device)
        if codec is not None:
            x = codec.encode(x)
        noise = torch.stack([torch.randn(x.shape[1:], generator=seeded_generator(seed, key, s + i))
                             for i in range(len(x))]).to(device)
        tt = torch.full((len(x),), float(t), device=device)
        x_t, _ = interpolate(x, noise, tt)
        with autocast(device, precision):
            _, pooled = model(x_t, tt, torch.as_tensor(cell[s: s + batch_size], device=device),
                              torch.as_tensor(sirna[s: s + batch_size], device=device), hidden_block=block)
        out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def fit_translator(hidden: np.ndarray, times: np.ndarray, targets: np.ndarray, image_ids: np.ndarray, cfg: dict,
                   seed: int) -> tuple[Translator, dict]:
    """Fit g on (hidden, t) -> normalised target. `image_ids` groups the pairs of one image for the hold-out.

    Returns the translator and its history: training loss per step and held-out loss before / after.
    """
    targets = normalise(targets)
    rng = np.random.default_rng(seed)
    images = np.unique(image_ids)
    held = rng.choice(images, size=max(1, len(images) // 10), replace=False) if len(images) >= 10 else images[:0]
    is_held = np.isin(image_ids, held)
    torch.manual_seed(seed)
    translator = Translator(hidden.shape[1], cfg["hidden"], targets.shape[1])
    optimizer = torch.optim.AdamW(translator.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    h = torch.from_numpy(np.asarray(hidden, dtype=np.float32))
    t = torch.from_numpy(np.asarray(times, dtype=np.float32))
    y = torch.from_numpy(targets)
    train_index = np.flatnonzero(~is_held)
    held_index = torch.from_numpy(np.flatnonzero(is_held))

    def held_loss():
        if len(held_index) == 0:
            return None
        with torch.no_grad():
            return float(((translator(h[held_index], t[held_index]) - y[held_index]) ** 2).sum(1).mean())

    def full_train_loss():
        with torch.no_grad():
            idx = torch.from_numpy(train_index)
            return float(((translator(h[idx], t[idx]) - y[idx]) ** 2).sum(1).mean())

    history = dict(held_out_before=held_loss(), train_before=full_train_loss(), losses=[])
    batch = min(cfg["batch_size"], len(train_index))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    for step in tqdm(range(cfg["steps"]), desc="translator", unit="step", file=sys.stderr, mininterval=5):
        idx = torch.from_numpy(rng.choice(train_index, size=batch, replace=False))
        loss = ((translator(h[idx], t[idx]) - y[idx]) ** 2).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["losses"].append(float(loss.detach()))
    history.update(held_out_after=held_loss(), train_after=full_train_loss(), n_pairs=int(len(h)),
                   n_images=int(len(images)), n_held_out_images=int(len(held)))
    translator.eval()
    return translator, history


def translate(translator: Translator, pooled: torch.Tensor, t: float) -> np.ndarray:
    with torch.no_grad():
        pooled = pooled.float().cpu()
        return translator(pooled, torch.full((len(pooled),), float(t))).numpy()


def save_translator(translator: Translator, meta: dict, path) -> None:
    """`<path>.safetensors` (weights) + `<path>.json` (sizes, block, times, training history)."""
    path = Path(path)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in translator.state_dict().items()}, str(tmp))
    write_json(dict(meta, in_dim=translator.in_dim, hidden=translator.hidden, out_dim=translator.out_dim),
               path.with_suffix(".json"))


def load_translator(path) -> tuple[Translator, dict]:
    path = Path(path)
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (weights, meta_path):
        if not p.exists():
            raise InputError("translator file missing", file=p, expected="the output of `generation_trust translator`")
    meta = read_json(meta_path)
    translator = Translator(meta["in_dim"], meta["hidden"], meta["out_dim"])
    state = read_tensors(weights, where="translator weights")
    problem = architecture_problem(state, translator.state_dict())
    if problem:
        raise InputError(problem, file=weights, expected="the output of `generation_trust translator` with this JSON")
    translator.load_state_dict(state)
    return translator.eval(), meta
