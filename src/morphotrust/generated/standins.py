"""STAND-INS for generated images, made from held-out real sites: NOT the output of any generative model.

They let the demo exercise the features, trust and validation stages with cases whose right answer is known,
before (or besides) a trained generator. From the EVALUATION split of the subset manifest (real held-out
sites of the seen and unseen arms; controls left out), each site gives, per condition:

- `standin:copy`         the site itself, requested under its own condition (a perfect "generator");
- `standin:wrong_label`  the site, requested under ANOTHER studied siRNA of the same cell type (its true
                         condition is in `Metadata_true_condition`): realistic but unfaithful;
- `standin:blur`         Gaussian blur of every channel (sigma in pixels at the subset resolution): unrealistic;
- `standin:drift`        intensity drift, one gain per channel, clipped to 0..255: unrealistic.

A condition whose cell type has no other studied siRNA gets no wrong_label stand-ins (said in the log).
Everything is deterministic given the seed. `Metadata_generator` of every row starts with `standin:`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from ..errors import InputError
from ..images import N_CHANNELS, write_site
from ..io import write_parquet

KINDS = ("copy", "wrong_label", "blur", "drift")
STUDIED_ARMS = ("seen", "unseen")


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (not across channels), uint8 kept."""
    out = gaussian_filter(image.astype(np.float32), sigma=(0, sigma, sigma), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def drift(image: np.ndarray, gain) -> np.ndarray:
    """Per-channel intensity gain, clipped to the uint8 range."""
    out = image.astype(np.float32) * np.asarray(gain, dtype=np.float32)[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plan_standins(manifest: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per stand-in to make: which real evaluation site, which kind, which requested condition.
    `cfg` needs seed and max_sites_per_condition (config generated.standins)."""
    rng = np.random.default_rng(cfg["seed"])
    studied = manifest[manifest["Metadata_arm"].isin(STUDIED_ARMS)]
    conditions = (studied.drop_duplicates("Metadata_condition")
                  .set_index("Metadata_condition")[["Metadata_cell_type", "Metadata_sirna_id", "Metadata_sirna",
                                                    "Metadata_arm"]].sort_index())
    evaluation = studied[studied["Metadata_split"] == "evaluation"]
    rows = []
    for condition in conditions.index:
        sites = evaluation[evaluation["Metadata_condition"] == condition].sort_values("Metadata_site_id")
        if len(sites) > cfg["max_sites_per_condition"]:
            keep = np.sort(rng.choice(len(sites), cfg["max_sites_per_condition"], replace=False))
            sites = sites.iloc[keep]
        cell_type = conditions.loc[condition, "Metadata_cell_type"]
        others = [c for c in conditions.index
                  if c != condition and conditions.loc[c, "Metadata_cell_type"] == cell_type]
        if not others:
            print(f"note: {condition}: no other studied siRNA of {cell_type}, so no wrong_label stand-ins")
        for site in sites.itertuples(index=False):
            for kind in KINDS:
                if kind == "wrong_label" and not others:
                    continue
                requested = others[rng.integers(len(others))] if kind == "wrong_label" else condition
                rows.append({"kind": kind, "site_id": site.Metadata_site_id,
                             "stack_index": int(site.Metadata_stack_index), "true_condition": condition,
                             "requested": requested})
    plan = pd.DataFrame(rows, columns=["kind", "site_id", "stack_index", "true_condition", "requested"])
    return plan.join(conditions, on="requested")


def make_standins(manifest_path, stack_path, cfg: dict, out_dir) -> pd.DataFrame:
    """Write the stand-in images and `out_dir/manifest.parquet` (generated-manifest columns + provenance).
    `cfg` is the config section generated.standins, every key given (defaults: the workflow's schema)."""
    if len(cfg["drift_gain"]) != N_CHANNELS:
        raise InputError(f"drift_gain has {len(cfg['drift_gain'])} values", where="generated.standins.drift_gain",
                         expected="one gain per channel (6)")
    out_dir = Path(out_dir)
    manifest = pd.read_parquet(manifest_path)
    plan = plan_standins(manifest, cfg)
    if plan.empty:
        raise InputError("no real evaluation sites of seen or unseen conditions to make stand-ins from",
                         file=manifest_path, expected="at least one condition listed in config/conditions.yaml")
    stack = np.load(stack_path, mmap_mode="r")
    if stack.ndim != 4 or stack.shape[1] != N_CHANNELS or plan["stack_index"].max() >= len(stack):
        raise InputError(f"image stack of shape {stack.shape} does not match the manifest", file=stack_path,
                         expected="the evaluation stack written for this manifest")
    ids, paths = [], []
    for row in tqdm(plan.itertuples(index=False), total=len(plan), desc="stand-ins", unit="img", mininterval=5):
        image = np.array(stack[row.stack_index])
        if row.kind == "blur":
            image = blur(image, cfg["blur_sigma"])
        elif row.kind == "drift":
            image = drift(image, cfg["drift_gain"])
        sample_id = f"standin-{row.kind}-{row.site_id}"
        path = out_dir / "images" / f"{sample_id}.tif"
        write_site(path, image)
        ids.append(sample_id)
        paths.append(str(path))
    table = pd.DataFrame({
        "Metadata_sample_id": ids,
        "Metadata_image_path": paths,
        "Metadata_cell_type": plan["Metadata_cell_type"].astype(str).to_numpy(),
        "Metadata_sirna_id": plan["Metadata_sirna_id"].astype(int).to_numpy(),
        "Metadata_sirna": plan["Metadata_sirna"].astype(str).to_numpy(),
        "Metadata_condition": plan["requested"].to_numpy(),
        "Metadata_arm": plan["Metadata_arm"].to_numpy(),
        "Metadata_source": "generated",
        "Metadata_generator": ("standin:" + plan["kind"]).to_numpy(),
        "Metadata_standin": True,
        "Metadata_true_condition": plan["true_condition"].to_numpy(),
        "Metadata_real_site_id": plan["site_id"].to_numpy(),
    })
    write_parquet(table, out_dir / "manifest.parquet")
    counts = table["Metadata_generator"].value_counts().reindex("standin:" + pd.Index(KINDS), fill_value=0)
    print(f"{len(table)} STAND-IN images (held-out real sites, not a generator) from "
          f"{plan['site_id'].nunique()} evaluation sites: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return table
