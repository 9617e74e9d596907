"""Feature extraction: images in, feature tables out (with their JSON sidecar), whole or by shard.

`extract` streams any iterable of `(6, H, W)` images in batches, so real stacks (memory-mapped) and
generated TIFFs go through the same code; every feature table has a JSON sidecar naming the encoder, its
weights (source and sha256), the channel handling and the device.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from ..errors import InputError
from ..images import IMAGE_PROBLEM, N_CHANNELS, image_problem, read_site
from ..io import read_json, write_json, write_parquet
from .encoders import Encoder, _embed, _to_inputs
from .statistics import stain_statistics

FEATURE_PREFIX = "Feature_"


def _check_image(image, index: int, channels: int = N_CHANNELS) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != channels:
        raise ValueError(f"image {index}: expected shape ({channels}, H, W), got {image.shape}")
    return image


def extract(images: Iterable[np.ndarray], n: int, encoder: Encoder, batch_size: int = 16,
            desc: str = "features") -> np.ndarray:
    """Encoder features of `n` six-channel `(6, H, W)` images, streamed in batches -> `(n, d)` float32.

    `images` may be any iterable (a generator reading files one by one, a memory-mapped stack): at most one
    batch is held in memory. `batch_size` counts encoder inputs, so a per-stain batch holds batch_size // 6
    sites (at least one). Runs in float32 on CPU; under bf16 (or fp16) autocast on a CUDA GPU.
    """
    import torch
    from tqdm import tqdm

    features = np.empty((n, encoder.feature_dim), dtype=np.float32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
                if encoder.device.type == "cuda" else contextlib.nullcontext())
    sites_per_batch = batch_sites(encoder, batch_size)
    done = 0
    batch: list[np.ndarray] = []

    def flush():
        nonlocal done
        parts = []
        if encoder.statistics != "only":
            with torch.inference_mode(), autocast:
                out = _embed(encoder, _to_inputs(encoder, batch)).float()
            if encoder.channels == "per_stain" and not encoder.channel_adaptive:
                out = out.reshape(len(batch), -1)  # rows were (site, stain): concatenate stains per site
            parts.append(out.cpu().numpy())
        if encoder.statistics != "none":
            parts.append(stain_statistics(np.stack(batch)))
        features[done:done + len(batch)] = np.hstack(parts)
        done += len(batch)
        progress.update(len(batch))
        batch.clear()

    with tqdm(total=n, desc=desc, unit="img", mininterval=5, file=sys.stderr) as progress:
        for index, image in enumerate(images):
            if index >= n:
                raise ValueError(f"more than the announced {n} images")
            batch.append(_check_image(image, index, encoder.image_channels))
            if len(batch) == sites_per_batch:
                flush()
        if batch:
            flush()
    if done != n:
        raise ValueError(f"expected {n} images, got {done}")
    if not np.isfinite(features).all():
        raise ValueError(f"{encoder.name} produced non-finite features (try features.device: cpu)")
    return features


def batch_sites(encoder: Encoder, batch_size: int) -> int:
    """Sites per encoder batch (a per-stain site is 6 encoder inputs; a channel-adaptive site is one input)."""
    per_stain_passes = encoder.channels == "per_stain" and encoder.statistics != "only" \
        and not encoder.channel_adaptive
    return max(1, batch_size // encoder.image_channels) if per_stain_passes else batch_size


# --------------------------------------------------------------------------------------------------------
def real_split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Subset manifest rows of one split (all arms), in stack order."""
    rows = manifest[manifest["Metadata_split"] == split]
    return rows.sort_values("Metadata_stack_index", kind="stable").reset_index(drop=True)


def iter_stack(stack_path, indices: Iterable[int]) -> Iterator[np.ndarray]:
    """Sites of a `(N, 6, R, R)` stack, read lazily (memory-mapped) in the given order."""
    stack = np.load(stack_path, mmap_mode="r")
    if stack.ndim != 4 or stack.shape[1] not in (N_CHANNELS, 3):
        raise InputError(f"image stack has shape {stack.shape}", file=stack_path,
                         expected="(N, 6, R, R), or (N, 3, R, R) composites")
    for index in indices:
        if not 0 <= index < len(stack):
            raise InputError(f"Metadata_stack_index {index} is outside the stack ({len(stack)} sites)",
                             file=stack_path, expected="the stack written for this manifest")
        yield np.array(stack[index])


def iter_manifest_images(manifest: pd.DataFrame, manifest_path, problems: list | None = None
                         ) -> Iterator[np.ndarray]:
    """Images of a generated manifest (`Metadata_image_path`, canonical `(6, H, W)` TIFFs), one at a time; with
    `problems`, each image's `image_problem` is appended to it."""
    for line, (sample, path) in enumerate(zip(manifest["Metadata_sample_id"], manifest["Metadata_image_path"])):
        try:
            image = read_site(path)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read image {path} of sample {sample}: {error}", file=manifest_path,
                             where=f"row {line}", expected="a (6, H, W) TIFF") from None
        if problems is not None:
            problems.append(image_problem(image))
        yield image


def with_image_problems(rows: pd.DataFrame, problems: list) -> pd.DataFrame:
    """`rows` with `Metadata_image_problem`: what `image_problem` found in each image, after any problem its
    producer recorded (pixels that were not numbers before they were stored as 8 bits); "" when none."""
    earlier = rows.get(IMAGE_PROBLEM, pd.Series("", index=rows.index)).fillna("").astype(str)
    combined = ["; ".join(p for p in pair if p) for pair in zip(earlier, problems)]
    return rows.assign(**{IMAGE_PROBLEM: combined})


def features_table(meta: pd.DataFrame, features: np.ndarray) -> pd.DataFrame:
    width = max(4, len(str(features.shape[1] - 1)))
    names = [f"{FEATURE_PREFIX}{i:0{width}d}" for i in range(features.shape[1])]
    metadata = meta[[c for c in meta.columns if c.startswith("Metadata_")]].reset_index(drop=True)
    return pd.concat([metadata, pd.DataFrame(features.astype(np.float32, copy=False), columns=names)], axis=1)


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def write_features(meta: pd.DataFrame, features: np.ndarray, info: dict, path) -> None:
    """`path` (parquet): `Metadata_` columns of `meta` + `Feature_0000...`; `path`.json: `info`."""
    if len(meta) != len(features):
        raise ValueError(f"{len(meta)} metadata rows but {len(features)} feature rows")
    write_parquet(features_table(meta, features), path)
    write_json({**info, "n_images": int(len(features))}, sidecar_path(path))


def read_features(path) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(metadata table, `(n, d)` float32 features, sidecar info) of a feature table."""
    path = Path(path)
    if not path.is_file() or not sidecar_path(path).is_file():
        raise InputError("feature table or its JSON sidecar is missing", file=path,
                         expected="the output of `morphotrust features real|generated`")
    table = pd.read_parquet(path)
    columns = [c for c in table.columns if c.startswith(FEATURE_PREFIX)]
    if not columns:
        raise InputError("no Feature_ columns", file=path, expected="a morphotrust feature table")
    meta = table[[c for c in table.columns if c.startswith("Metadata_")]]
    return meta, table[columns].to_numpy(dtype=np.float32), read_json(sidecar_path(path))




def shard_rows(rows: pd.DataFrame, shard: int, shards: int, sites_per_batch: int, source):
    """(rows to run, slice of the shard's own rows among them) for shard `shard` of `shards` (condition groups,
    morphotrust.shards): every whole batch of the unsharded run that holds one of the shard's rows, so each
    image meets the same batch neighbours and its features are byte-identical on CPU."""
    from ..shards import aligned_range, shard_range

    start, stop = shard_range(rows["Metadata_condition"], shard, shards, source)
    lo, hi = aligned_range(start, stop, sites_per_batch, len(rows))
    return rows.iloc[lo:hi].reset_index(drop=True), slice(start - lo, stop - lo)


def merge_shard_tables(paths, out) -> None:
    """One feature table (and sidecar) from shard tables in shard order: the unsharded run's files."""
    parts = [read_features(p) for p in paths]
    info = {k: v for k, v in parts[0][2].items() if k not in ("shard", "n_images")}
    for path, (_, _, other) in zip(paths, parts):
        if {k: v for k, v in other.items() if k not in ("shard", "n_images")} != info:
            raise InputError("shard tables of different runs (encoder or source differ)", file=path,
                             expected=f"the shards of one features job ({paths[0]})")
    meta = pd.concat([m for m, _, _ in parts], ignore_index=True)
    write_features(meta, np.concatenate([f for _, f, _ in parts]), info, out)

