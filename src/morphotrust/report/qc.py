"""Image-quality rules on CellProfiler's per-image measurements (config `report.qc`).

Column names are pycytominer's (morphotrust.morphology.fields): CellProfiler's image measurements carry `Image_`.

- blurred: a stain's focus measure `Image_ImageQuality_PowerLogLogSlope_<stain>` (slope of the image's power
  spectrum on log-log axes; blur removes fine detail and makes it steeper, i.e. more negative) is more
  than `blur_drop` below the median of the real sites of the same cell type, or below the absolute
  `blur_min_slope` when that is set. Relative by default because the slope's absolute value depends on the
  image size and the cell type (on the 64-pixel demo, real sites range from about -1.8 to +2.4 and a
  Gaussian blur of sigma 2 px lowers the slope by 1.0-1.5 in every stain).
- saturated: `Image_ImageQuality_PercentMaximal_<stain>` (percent of pixels at the image's maximum value) is above
  `saturation_max_percent`; an unsaturated image has only a handful of pixels at its maximum.
- failed segmentation: the site failed the segmentation gate (morphotrust.morphology.gate, config
  morphology.gate: nuclei count or median nucleus diameter outside the configured range); such real sites are
  left out of validation.
- sparse: fewer than `min_nuclei` nuclei (`Image_Count_Nuclei`) per site (for a well: on average over its
  measured sites), i.e. an empty or nearly empty field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..morphology.fields import WELL, count_feature, image_feature
from ..morphology.gate import OK as GATE_OK
from ..morphology.gate import PROBLEM as GATE_PROBLEM
from ..morphology.sites import STAIN_NAMES

FOCUS = image_feature("ImageQuality_PowerLogLogSlope_{}")
SATURATION = image_feature("ImageQuality_PercentMaximal_{}")
COUNT = count_feature("Nuclei")
FLAG_COLUMNS = ["id", "stain", "problem", "measurement", "value", "rule"]


def measured(table: pd.DataFrame | None, column: str) -> bool:
    return table is not None and column in table.columns and table[column].notna().any()


def not_measured(table: pd.DataFrame | None) -> list[str]:
    """The QC measurements absent from a per-image table (the report says "not measured" for them)."""
    wanted = [COUNT] + [FOCUS.format(s) for s in STAIN_NAMES] + [SATURATION.format(s) for s in STAIN_NAMES]
    return [c for c in wanted if not measured(table, c)]


def focus_reference(real: pd.DataFrame | None) -> pd.DataFrame | None:
    """Median focus slope of the real sites per cell type (rows) and stain (columns)."""
    if real is None or "Metadata_cell_type" not in real.columns:
        return None
    columns = {s: FOCUS.format(s) for s in STAIN_NAMES if measured(real, FOCUS.format(s))}
    if not columns:
        return None
    medians = real.groupby("Metadata_cell_type")[list(columns.values())].median()
    return medians.rename(columns={v: k for k, v in columns.items()})


def site_flags(table: pd.DataFrame | None, reference: pd.DataFrame | None, qc: dict, id_column: str) -> pd.DataFrame:
    """One row per (site, stain, problem) that breaks a blur or saturation rule."""
    if table is None or table.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    rows = []
    ids = table[id_column].astype(str).to_numpy()
    cell_types = table["Metadata_cell_type"].astype(str).to_numpy() if "Metadata_cell_type" in table else None
    for stain in STAIN_NAMES:
        focus = FOCUS.format(stain)
        if measured(table, focus):
            values = table[focus].to_numpy(float)
            if qc["blur_drop"] is not None and reference is not None and stain in reference.columns \
                    and cell_types is not None:
                medians = reference[stain].reindex(cell_types).to_numpy(float)
                for i in np.flatnonzero(values < medians - qc["blur_drop"]):
                    rows.append((ids[i], stain, "blurred", focus, values[i],
                                 f"focus slope {values[i]:.2f} is more than {qc['blur_drop']:g} below the median of "
                                 f"real {cell_types[i]} sites ({medians[i]:.2f})"))
            if qc["blur_min_slope"] is not None:
                for i in np.flatnonzero(values < qc["blur_min_slope"]):
                    rows.append((ids[i], stain, "blurred", focus, values[i],
                                 f"focus slope {values[i]:.2f} < {qc['blur_min_slope']:g}"))
        saturation = SATURATION.format(stain)
        if measured(table, saturation):
            values = table[saturation].to_numpy(float)
            for i in np.flatnonzero(values > qc["saturation_max_percent"]):
                rows.append((ids[i], stain, "saturated", saturation, values[i],
                             f"{values[i]:.2f}% of pixels at the maximum > {qc['saturation_max_percent']:g}%"))
    flags = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    # one blur flag per site and stain even when both blur rules fire
    return flags.drop_duplicates(["id", "stain", "problem"]).reset_index(drop=True)


def sparse_sites(table: pd.DataFrame | None, qc: dict, id_column: str) -> pd.DataFrame:
    """Sites (or generated samples) with fewer than `min_nuclei` nuclei."""
    if not measured(table, COUNT):
        return pd.DataFrame(columns=FLAG_COLUMNS)
    low = table[table[COUNT] < qc["min_nuclei"]]
    return pd.DataFrame({"id": low[id_column].astype(str), "stain": "DNA", "problem": "sparse", "measurement": COUNT,
                         "value": low[COUNT].to_numpy(float),
                         "rule": [f"{v:g} nuclei < {qc['min_nuclei']:g}" for v in low[COUNT]]}, columns=FLAG_COLUMNS)


FAILED = "failed segmentation"


def segmentation_failures(table: pd.DataFrame | None, id_column: str) -> pd.DataFrame:
    """Sites that failed the segmentation gate (tables without the gate's columns: none)."""
    if table is None or GATE_OK not in table.columns:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    bad = table[~table[GATE_OK].astype(bool)]
    value = bad[COUNT].to_numpy(float) if COUNT in bad.columns else np.full(len(bad), np.nan)
    return pd.DataFrame({"id": bad[id_column].astype(str), "stain": "DNA", "problem": FAILED,
                         "measurement": f"{COUNT}, median nucleus diameter", "value": value,
                         "rule": bad[GATE_PROBLEM].astype(str) + " (config morphology.gate)"}, columns=FLAG_COLUMNS)


def all_flags(table: pd.DataFrame | None, reference: pd.DataFrame | None, qc: dict, id_column: str) -> pd.DataFrame:
    """Blur, saturation and sparse findings, each with the well and condition of its site (when the table has them)."""
    parts = [site_flags(table, reference, qc, id_column), sparse_sites(table, qc, id_column),
             segmentation_failures(table, id_column)]
    flags = pd.concat([p for p in parts if len(p)] or [parts[0]], ignore_index=True)
    for column, name in ((WELL, "well"), ("Metadata_condition", "condition")):
        if table is not None and column in table.columns and len(flags):
            flags[name] = flags["id"].map(table.set_index(table[id_column].astype(str))[column])
        else:
            flags[name] = pd.Series(dtype=object)
    return flags


def well_summary(table: pd.DataFrame | None, flags: pd.DataFrame, qc: dict) -> pd.DataFrame:
    """Per measured well: sites measured, mean nuclei per site, sparse (mean below `min_nuclei`), flagged sites.

    `table`: CellProfiler per-image rows (well in Metadata_Well); the result names the well Metadata_well, as the
    manifest and the plate maps do."""
    columns = ["Metadata_well", "sites_measured", "mean_nuclei", "sparse", "sites_blurred", "sites_saturated",
               "sites_failed_segmentation"]
    if table is None or table.empty:
        return pd.DataFrame(columns=columns)
    counts = table[COUNT] if measured(table, COUNT) else pd.Series(np.nan, index=table.index)
    frame = pd.DataFrame({"Metadata_well": table[WELL].astype(str), "site": table["Metadata_site_id"],
                          "count": counts.astype(float)})
    blurred = set(flags.loc[flags["problem"] == "blurred", "id"])
    saturated = set(flags.loc[flags["problem"] == "saturated", "id"])
    frame["blurred"] = frame["site"].astype(str).isin(blurred)
    frame["saturated"] = frame["site"].astype(str).isin(saturated)
    frame["failed"] = frame["site"].astype(str).isin(set(flags.loc[flags["problem"] == FAILED, "id"]))
    wells = frame.groupby("Metadata_well", sort=True).agg(
        sites_measured=("site", "size"), mean_nuclei=("count", "mean"),
        sites_blurred=("blurred", "sum"), sites_saturated=("saturated", "sum"),
        sites_failed_segmentation=("failed", "sum")).reset_index()
    wells["sparse"] = wells["mean_nuclei"] < qc["min_nuclei"]
    return wells[columns]
