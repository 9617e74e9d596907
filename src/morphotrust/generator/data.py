"""The generator's view of the subset manifest: training rows, attribute vocabularies, image loading.

Only the train split of the seen arm ever reaches the training loader. Attribute vocabularies are built
from those rows; a requested value without a training embedding is an input error, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from .model import ATTRIBUTES

MANIFEST_COLUMNS = ("Metadata_site_id", "Metadata_cell_type", "Metadata_sirna_id", "Metadata_condition",
                    "Metadata_arm", "Metadata_split", "Metadata_stack_index")
# Manifest column holding each attribute's value.
ATTRIBUTE_COLUMNS = {"cell_type": "Metadata_cell_type", "sirna_id": "Metadata_sirna_id"}


def read_manifest(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError("subset manifest not found", file=path, expected="the output of the subsets stage")
    manifest = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path,
                         expected="the subset manifest columns of docs/design.md")
    return manifest


def training_rows(manifest: pd.DataFrame, manifest_path="subset manifest") -> pd.DataFrame:
    """Rows the generator trains on: split == train and arm == seen. Checks no unseen condition slips in."""
    rows = manifest[(manifest["Metadata_split"] == "train") & (manifest["Metadata_arm"] == "seen")]
    unseen = set(manifest.loc[manifest["Metadata_arm"] == "unseen", "Metadata_condition"])
    leaked = sorted(set(rows["Metadata_condition"]) & unseen)
    if leaked:
        raise InputError(f"condition(s) {', '.join(leaked)} are listed both as seen training rows and as unseen",
                         file=manifest_path, expected="unseen conditions absent from the training split")
    if rows.empty:
        raise InputError("no rows with Metadata_split == train and Metadata_arm == seen", file=manifest_path,
                         expected="at least one seen training site")
    return rows.reset_index(drop=True)


def conditions_to_sample(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every listed condition of both arms, one row each, seen first then unseen, sorted by name."""
    rows = manifest[manifest["Metadata_arm"].isin(["seen", "unseen"])]
    columns = ["Metadata_condition", "Metadata_cell_type", "Metadata_sirna_id", "Metadata_arm"]
    if "Metadata_sirna" in manifest.columns:
        columns.append("Metadata_sirna")
    conditions = rows[columns].drop_duplicates("Metadata_condition").copy()
    conditions["_arm_order"] = conditions["Metadata_arm"].map({"seen": 0, "unseen": 1})
    conditions = conditions.sort_values(["_arm_order", "Metadata_condition"]).drop(columns="_arm_order")
    if "Metadata_sirna" not in conditions.columns:
        conditions["Metadata_sirna"] = conditions["Metadata_sirna_id"].astype(str)
    return conditions.reset_index(drop=True)


def build_vocabularies(train_rows: pd.DataFrame) -> dict[str, list]:
    """Sorted real values per attribute seen in training (indices 0..V-1; V is the null token)."""
    return {
        "cell_type": sorted(str(v) for v in train_rows["Metadata_cell_type"].unique()),
        "sirna_id": sorted(int(v) for v in train_rows["Metadata_sirna_id"].unique()),
    }


def encode(rows: pd.DataFrame, vocabularies: dict[str, list], source="requested conditions") -> dict[str, np.ndarray]:
    """Vocabulary indices of each row's attributes; InputError naming any value the model has no embedding for."""
    encoded, problems = {}, []
    for attribute in ATTRIBUTES:
        index = {v: i for i, v in enumerate(vocabularies[attribute])}
        cast = str if attribute == "cell_type" else int
        values = [cast(v) for v in rows[ATTRIBUTE_COLUMNS[attribute]]]
        unknown = sorted({v for v in values if v not in index})
        problems += [f"{attribute} {v!r} has no training embedding" for v in unknown]
        encoded[attribute] = np.array([index.get(v, -1) for v in values], dtype=np.int64)
    if problems:
        raise InputError("; ".join(problems), file=source,
                         expected="each attribute value of a requested condition to occur in the seen training split")
    return encoded


def data_fingerprint(train_rows: pd.DataFrame, stacks_dir, resolution: int) -> str:
    """Identity of what the model is trained on, stored in checkpoints: the training sites (ids, conditions), the
    bytes of their images in the train stack, in row order, and the resolution. A checkpoint is resumed only when
    this (and the training settings beside it, train.py / autoencoder.py) is unchanged: the same site ids with new
    pixels (re-rendered, fixed or replaced images) are other data."""
    digest = hashlib.sha256(f"resolution {int(resolution)}\n".encode())
    digest.update("\n".join(train_rows["Metadata_site_id"].astype(str) + "|"
                            + train_rows["Metadata_condition"].astype(str)).encode())
    stack = open_stack(stacks_dir, "train", resolution)
    index = train_rows["Metadata_stack_index"].to_numpy(dtype=np.int64)
    for start in range(0, len(index), 256):  # a block at a time: the stack may be larger than memory
        digest.update(np.ascontiguousarray(stack[index[start:start + 256]]).tobytes())
    return digest.hexdigest()[:24]


def resume_mismatch(saved: str, current: str) -> str:
    """Why a checkpoint's fingerprint (a JSON object, see `data_fingerprint`) differs from this run's, in words."""
    try:
        old, new = json.loads(saved), json.loads(current)
    except (TypeError, ValueError):
        return "it was written by another version of morphotrust"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    reasons = ["the training data changed (its images, site ids or conditions)"] if "data" in changed else []
    settings = [k for k in changed if k != "data"]
    if settings:
        reasons.append(f"the settings changed ({', '.join(settings)})")
    return " and ".join(reasons) or "it was written with other settings"


def open_stack(stacks_dir, split: str, resolution: int):
    path = Path(stacks_dir) / f"{split}.npy"
    if not path.exists():
        raise InputError("image stack not found", file=path, expected="the output of the subsets stage")
    stack = np.load(path, mmap_mode="r")
    if stack.ndim != 4 or stack.shape[1] != 6 or stack.shape[2:] != (resolution, resolution) or stack.dtype != np.uint8:
        raise InputError(f"stack has shape {stack.shape} and dtype {stack.dtype}", file=path,
                         expected=f"(N, 6, {resolution}, {resolution}) uint8 (subsets.resolution)")
    return stack


def read_images(stacks_dir, rows: pd.DataFrame, resolution: int) -> np.ndarray:
    """Images of manifest rows (any splits) as one (N, 6, R, R) uint8 array, in row order."""
    out = np.empty((len(rows), 6, resolution, resolution), dtype=np.uint8)
    for split, part in rows.reset_index(drop=True).groupby("Metadata_split"):
        stack = open_stack(stacks_dir, split, resolution)
        index = part["Metadata_stack_index"].to_numpy()
        if len(index) and index.max() >= len(stack):
            raise InputError(f"Metadata_stack_index {index.max()} beyond the {len(stack)} images of {split}.npy",
                             file=Path(stacks_dir) / f"{split}.npy", expected="stacks written from this manifest")
        out[part.index.to_numpy()] = stack[index]
    return out


class TrainingImages(torch.utils.data.Dataset):
    """Training sites streamed from the memory-mapped train stack: (uint8 image, cell index, siRNA index)."""

    def __init__(self, stacks_dir, train_rows: pd.DataFrame, vocabularies: dict, resolution: int):
        self.path = Path(stacks_dir) / "train.npy"
        stack = open_stack(stacks_dir, "train", resolution)  # checked here, reopened lazily per worker
        self.stack_index = train_rows["Metadata_stack_index"].to_numpy(dtype=np.int64)
        if self.stack_index.max() >= len(stack):
            raise InputError(f"Metadata_stack_index {self.stack_index.max()} beyond the {len(stack)} training images",
                             file=self.path, expected="the stack written from this manifest")
        codes = encode(train_rows, vocabularies, "training rows")
        self.cell, self.sirna = codes["cell_type"], codes["sirna_id"]
        self.conditions = train_rows["Metadata_condition"].to_numpy()
        self._stack = None

    def __len__(self):
        return len(self.stack_index)

    def __getitem__(self, i):
        if self._stack is None:
            self._stack = np.load(self.path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._stack[self.stack_index[i]]))
        return image, int(self.cell[i]), int(self.sirna[i])


class TrainingLatents(torch.utils.data.Dataset):
    """The training sites as scaled latents (encoded once, kept in memory): (latent, cell index, siRNA index)."""

    def __init__(self, images: TrainingImages, latents: torch.Tensor):
        if len(latents) != len(images):
            raise ValueError(f"{len(latents)} latents for {len(images)} training images")
        self.latents, self.cell, self.sirna = latents.float(), images.cell, images.sirna

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, i):
        return self.latents[i], int(self.cell[i]), int(self.sirna[i])


class EpochBatches(torch.utils.data.Sampler):
    """Batch indices for steps `start_step .. steps-1`, a pure function of (seed, step).

    The index stream is the concatenation of one permutation per epoch (epoch e shuffled with seed
    (seed, e)); step s takes stream[s*B:(s+1)*B]. A resumed run therefore sees exactly the batches an
    uninterrupted run would, without any sampler state in the checkpoint.

    With a `team` of W data-parallel ranks, `batch_size` is the GLOBAL batch and each rank gets its slice
    (distributed.Team.share): W ranks see together exactly the batches of one process.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps: int, team=None):
        self.n, self.batch_size, self.seed, self.start_step, self.steps = n, batch_size, seed, start_step, steps
        self.team = team

    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __len__(self):
        return max(self.steps - self.start_step, 0)

    def __iter__(self):
        position = self.start_step * self.batch_size
        epoch, offset = divmod(position, self.n)
        order = self._epoch(epoch)
        for _ in range(len(self)):
            batch = []
            while len(batch) < self.batch_size:
                take = order[offset: offset + self.batch_size - len(batch)]
                batch.extend(take.tolist())
                offset += len(take)
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
            yield batch if self.team is None else self.team.share(batch)


def ignore_stop_signals(_worker_id=None):
    """Loader workers ignore SIGTERM/SIGUSR1: the main process finishes its step, saves, and stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
