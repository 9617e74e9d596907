"""Condition-balanced, plate-stratified subsets of the real sites, and their image stacks.

Per condition, up to N sites are taken whole wells at a time, interleaving the condition's plates so every
experiment and plate contributes evenly. Splits are assigned per well (two sites of one well never land in
different splits, which would leak near-duplicates from training into evaluation). Seen conditions are split
train / calibration / evaluation; unseen conditions go entirely to evaluation, so they never reach training.
Same-plate controls are kept beside the listed conditions with arm `control`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import coverage
from .conditions import NEGATIVE_CONTROL_ID, POSITIVE_CONTROL_IDS, load_conditions
from ..errors import InputError
from ..images import N_CHANNELS, read_site, resize_site
from ..io import atomic_path, write_csv, write_parquet

SPLITS = ("train", "calibration", "evaluation")


def _interleaved_wells(sites: pd.DataFrame, rng: np.random.Generator) -> list[pd.DataFrame]:
    """The sites of one condition as a list of wells: shuffled within each plate, plates interleaved."""
    by_plate = []
    for _, plate_sites in sites.groupby(["Metadata_experiment", "Metadata_plate"], sort=True):
        wells = [w for _, w in plate_sites.groupby("Metadata_well", sort=True)]
        by_plate.append([wells[i].sort_values("Metadata_site") for i in rng.permutation(len(wells))])
    by_plate = [by_plate[i] for i in rng.permutation(len(by_plate))]
    order = []
    for depth in range(max((len(p) for p in by_plate), default=0)):
        order.extend(plate[depth] for plate in by_plate if depth < len(plate))
    return order


def _take_sites(wells: list[pd.DataFrame], max_sites: int) -> list[pd.DataFrame]:
    taken, n = [], 0
    for well in wells:
        if n >= max_sites:
            break
        well = well.iloc[: max_sites - n]
        taken.append(well)
        n += len(well)
    return taken


def _assign_splits(wells: list[pd.DataFrame], fractions: dict) -> list[str]:
    """One split per well, keeping each split's share of sites close to its fraction.

    Each well goes to the split furthest below its target number of sites; ties go to the earlier split
    in SPLITS. Splits with fraction 0 get nothing.
    """
    total = sum(len(w) for w in wells)
    target = np.array([fractions[s] for s in SPLITS], dtype=float) * total
    assigned = np.zeros(len(SPLITS))
    splits = []
    for well in wells:
        deficit = np.where(target > 0, target - assigned, -np.inf)
        choice = int(np.argmax(deficit))
        assigned[choice] += len(well)
        splits.append(SPLITS[choice])
    return splits


def build_manifest(sites: pd.DataFrame, conditions: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Select and split sites. `sites` is the ingest sites table; `conditions` from `load_conditions`."""
    fractions = cfg["split_fractions"]
    if not np.isclose(sum(fractions.values()), 1.0):
        raise InputError(f"split fractions sum to {sum(fractions.values()):.3f}",
                         where="config subsets.split_fractions", expected="fractions summing to 1")
    rng = np.random.default_rng(cfg["seed"])
    by_condition = sites.groupby(["Metadata_cell_type", "Metadata_sirna_id"])
    parts = []
    for condition in conditions.itertuples():
        key = (condition.cell_type, condition.sirna_id)
        candidates = by_condition.get_group(key) if key in by_condition.groups else sites.iloc[:0]
        if len(candidates) < cfg["min_sites_per_condition"]:
            raise InputError(
                f"condition {condition.condition} has {len(candidates)} ingested site(s), fewer than "
                f"subsets.min_sites_per_condition = {cfg['min_sites_per_condition']} "
                "(sites may have been skipped at ingest: see results/data/qc_skipped.csv)",
                file="config/conditions.yaml", where=condition.entry)
        wells = _take_sites(_interleaved_wells(candidates, rng), cfg["max_sites_per_condition"])
        splits = (_assign_splits(wells, fractions) if condition.arm == "seen"
                  else ["evaluation"] * len(wells))
        for well, split in zip(wells, splits):
            parts.append(well.assign(Metadata_condition=condition.condition, Metadata_arm=condition.arm,
                                     Metadata_split=split))
    selected = pd.concat(parts, ignore_index=True)
    parts.append(_same_plate_controls(sites, selected, cfg, rng))
    manifest = pd.concat(parts, ignore_index=True)
    manifest["Metadata_source"] = "real"
    manifest = manifest.sort_values(["Metadata_split", "Metadata_arm", "Metadata_condition",
                                     "Metadata_site_id"], kind="stable").reset_index(drop=True)
    manifest["Metadata_stack_index"] = manifest.groupby("Metadata_split").cumcount()
    return manifest


def _same_plate_controls(sites, selected, cfg, rng) -> pd.DataFrame:
    """Controls from every plate that contributes selected sites, not already selected as a condition."""
    controls = cfg["controls"]
    kinds = []
    if controls["negative"]:
        kinds.append(("negative", sites["Metadata_sirna_id"] == NEGATIVE_CONTROL_ID))
    if controls["positive"]:
        kinds.append(("positive", sites["Metadata_sirna_id"].isin(POSITIVE_CONTROL_IDS)))
    plate_columns = ["Metadata_experiment", "Metadata_plate"]
    on_plates = pd.MultiIndex.from_frame(sites[plate_columns]).isin(
        pd.MultiIndex.from_frame(selected[plate_columns]))
    free = ~sites["Metadata_site_id"].isin(selected["Metadata_site_id"])
    parts = []
    for kind, is_kind in kinds:
        pool = sites[is_kind & on_plates & free]
        for _, plate_sites in pool.groupby(["Metadata_experiment", "Metadata_plate"], sort=True):
            wells = _take_sites(_interleaved_wells(plate_sites, rng), controls["max_sites_per_plate"])
            for well, split in zip(wells, _assign_splits(wells, cfg["split_fractions"])):
                condition = well["Metadata_cell_type"].astype(str) + ":" + well["Metadata_sirna_id"].astype(str)
                parts.append(well.assign(Metadata_condition=condition, Metadata_arm="control",
                                         Metadata_split=split))
    return pd.concat(parts, ignore_index=True) if parts else selected.iloc[:0]


def summarise(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per condition and per plate, one column per split, for the report."""
    tables = []
    for level, columns in (("condition", ["Metadata_condition", "Metadata_arm"]),
                           ("plate", ["Metadata_experiment", "Metadata_plate"])):
        counts = manifest.pivot_table(index=columns, columns="Metadata_split", values="Metadata_site_id",
                                      aggfunc="count", fill_value=0)
        counts = counts.reindex(columns=list(SPLITS), fill_value=0)
        counts["total"] = counts.sum(axis=1)
        counts = counts.reset_index()
        if level == "condition":
            counts = counts.rename(columns={"Metadata_condition": "name", "Metadata_arm": "arm"})
        else:
            counts["name"] = counts["Metadata_experiment"] + "/Plate" + counts["Metadata_plate"].astype(str)
            counts["arm"] = ""
            counts = counts.drop(columns=["Metadata_experiment", "Metadata_plate"])
        tables.append(counts.assign(level=level)[["level", "name", "arm", *SPLITS, "total"]])
    return pd.concat(tables, ignore_index=True)


def write_stack(manifest: pd.DataFrame, split: str, resolution: int, path) -> None:
    """Write the `(N, 6, R, R)` uint8 stack of one split, streaming site by site (memory: one site)."""
    rows = manifest[manifest["Metadata_split"] == split].sort_values("Metadata_stack_index")
    with atomic_path(path, suffix=".npy") as tmp:
        stack = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(rows), N_CHANNELS, resolution, resolution))
        for i, image_path in enumerate(tqdm(rows["Metadata_image_path"], desc=f"stack {split}",
                                            unit="site", mininterval=5)):
            image = read_site(image_path)
            if image.dtype != np.uint8:
                raise InputError(f"site image has dtype {image.dtype}", file=image_path,
                                 expected="uint8 like the RxRx1 PNGs")
            stack[i] = resize_site(image, resolution)
        stack.flush()
        del stack


def skipped_sites(metadata_path, skipped_path) -> tuple[pd.DataFrame | None, str | None]:
    """(metadata rows of the sites skipped at ingest, the file listing them); (None, None) without the files."""
    if not metadata_path or not skipped_path:
        return None, None
    from ..data import read_metadata

    skipped = pd.read_csv(skipped_path, dtype={"site_id": str}, keep_default_na=False)
    metadata = read_metadata(metadata_path)
    return metadata[metadata["site_id"].isin(set(skipped["site_id"]) - {""})], skipped_path


def _metadata_view(sites: pd.DataFrame) -> pd.DataFrame:
    """Sites table with the official RxRx1 column names, as `load_conditions` expects."""
    return sites.rename(columns=lambda c: c.removeprefix("Metadata_"))


def write_subsets(sites_path, conditions_path, cfg: dict, out_dir, metadata_path=None,
                  skipped_path=None) -> pd.DataFrame:
    """The subsets stage: conditions.csv, summary.csv, manifest.csv/.parquet and coverage.csv in `out_dir`.

    `cfg`: the checked `subsets` config section; `metadata_path` and `skipped_path` (results/data/qc_skipped.csv)
    let a condition left with too few sites name the sites skipped at ingest."""
    sites = pd.read_parquet(sites_path)
    conditions = load_conditions(conditions_path, _metadata_view(sites), cfg["min_sites_per_condition"],
                                 *skipped_sites(metadata_path, skipped_path))
    manifest = build_manifest(sites, conditions, cfg)
    out = Path(out_dir)
    write_csv(conditions.drop(columns="entry"), out / "conditions.csv")
    write_csv(summarise(manifest), out / "summary.csv")
    write_csv(manifest, out / "manifest.csv")
    write_parquet(manifest, out / "manifest.parquet")
    coverage.write(conditions, manifest, cfg["coverage"], out / "coverage.csv")
    return manifest
