"""Feature cleaning of per-image CellProfiler tables, fitted on real rows only (spec: validation.md).

The tables are in pycytominer's conventions (morphotrust.morphology.fields); the selection and
standardisation steps are pycytominer's own functions. Fit, in this order, on the real table:
  1. features: the columns pycytominer infers (`infer_cp_features(..., image_features=True)`: Cells_, Nuclei_,
     Cytoplasm_ and numeric Image_ columns; Metadata_ columns never); of these, names containing metadata,
     filename, pathname, imagenumber, objectnumber, executiontime, moduleerror, series, frame, group_index,
     group_number or url (case-insensitive, the spec's rule) and non-numeric columns are dropped and counted;
  2. drop real rows with NaN (or +-inf) in any remaining feature;
  3. variance filter, pycytominer `feature_select(operation="variance_threshold")` (scikit-learn's
     VarianceThreshold: variance <= threshold is dropped), by `variance_filter`:
       relative (default, unit-free): on each feature divided by its mean absolute value, threshold
         `relative_variance_threshold`² = 0.01²: a feature is dropped when its SD is at most 1% of its typical
         size. Chosen from the demo (64 px, 40 real sites, 2,751 features): 152 features are constant and every
         other one has SD >= 2.8% of its mean |value| (nuclear solidity 3.3%), so 1% drops exactly the
         constant ones; 5% would drop 12 informative ones, 10% 99.
       raw (the paper's): variance of the raw values <= `variance_threshold` (1e-5). Not unit-free: on the
         demo it drops 102 non-constant features whose SD is 19-124% of their mean (intensities live in [0, 1]).
  4. pycytominer `normalize(method="standardize")` on the real rows, then
     `feature_select(operation="drop_outliers", outlier_cutoff=max_abs_z)`: drop any feature where some real
     row has |z| > 5;
  5. the mean and SD (scikit-learn StandardScaler, as pycytominer's standardize) of the kept features.
The same columns, means and scales are then applied to generated rows (rows with NaN in a kept column are
dropped and reported): the real rows come out exactly as pycytominer's normalize gives them. The number of
kept features depends on the data and is reported under both variance filters, never assumed. Saved as
arrays (.npz) + JSON, never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from .. import fitted
from ..errors import InputError
from .gate import OK as GATE_OK
from ..io import write_json, write_parquet
from .fields import COMPARTMENTS, is_bookkeeping

METADATA_LIKE = ("metadata", "filename", "pathname", "imagenumber", "objectnumber", "executiontime",
                 "moduleerror", "series", "frame", "group_index", "group_number", "url")
VARIANCE_FILTERS = ("relative", "raw")
VARIANCE_FILTER = "relative"
RELATIVE_VARIANCE_THRESHOLD = 0.01  # SD / mean |value|
VARIANCE_THRESHOLD = 1e-5  # raw variance (the paper's)
MAX_ABS_Z = 5.0
FORMAT = "morphotrust.feature_cleaner/2"


def is_metadata_like(name: str) -> bool:
    lowered = name.lower()
    return any(token in lowered for token in METADATA_LIKE)


def inferred_features(table: pd.DataFrame) -> list:
    """The feature columns pycytominer infers from a per-image table (compartments and Image_)."""
    from pycytominer.cyto_utils import infer_cp_features

    try:
        return infer_cp_features(table, compartments=list(COMPARTMENTS), image_features=True)
    except ValueError:  # pycytominer's "No features or metadata found"
        return []


def low_variance(values: pd.DataFrame, variance_filter: str, variance_threshold: float,
                 relative_variance_threshold: float) -> list:
    """Columns of `values` that pycytominer's variance_threshold drops, on raw or scale-free values."""
    from pycytominer import feature_select

    columns = list(values.columns)
    if variance_filter == "relative":
        size = values.abs().mean()
        values = values / size.where(size > 0, 1.0)  # an all-zero column stays zero: dropped
        threshold = relative_variance_threshold ** 2
    elif variance_filter == "raw":
        threshold = variance_threshold
    else:
        raise ValueError(f"variance_filter must be one of {VARIANCE_FILTERS}, not {variance_filter!r}")
    kept = feature_select(values, features=columns, operation="variance_threshold", min_variance=threshold)
    return [c for c in columns if c not in kept.columns]


def outliers(values: pd.DataFrame, max_abs_z: float) -> list:
    """Columns where some row has |z| > max_abs_z after pycytominer's standardize of these rows."""
    from pycytominer import feature_select, normalize

    columns = list(values.columns)
    z = normalize(values, features=columns, meta_features=[], method="standardize")
    kept = feature_select(z, features=columns, operation="drop_outliers", outlier_cutoff=max_abs_z)
    return [c for c in columns if c not in kept.columns]


def _features(table: pd.DataFrame, columns) -> np.ndarray:
    values = table[list(columns)].to_numpy(dtype=np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass
class FeatureCleaner:
    columns: list
    mean: np.ndarray
    scale: np.ndarray
    variance_filter: str = VARIANCE_FILTER
    variance_threshold: float = VARIANCE_THRESHOLD
    relative_variance_threshold: float = RELATIVE_VARIANCE_THRESHOLD
    max_abs_z: float = MAX_ABS_Z
    report: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # step -> dropped column names

    @classmethod
    def fit(cls, real: pd.DataFrame, variance_filter: str = VARIANCE_FILTER,
            variance_threshold: float = VARIANCE_THRESHOLD,
            relative_variance_threshold: float = RELATIVE_VARIANCE_THRESHOLD, max_abs_z: float = MAX_ABS_Z,
            source="real table") -> "FeatureCleaner":
        if variance_filter not in VARIANCE_FILTERS:
            raise InputError(f"variance filter {variance_filter!r}", where="config morphology.variance_filter",
                             expected=" or ".join(VARIANCE_FILTERS))
        dropped = {}
        columns = inferred_features(real)
        if not columns:
            raise InputError("no feature columns (Cells_, Nuclei_, Cytoplasm_ or Image_ ...)", file=source,
                             expected="a per-image CellProfiler table in pycytominer's conventions, as written by "
                                      "`morphotrust morphology merge`")
        dropped["metadata_like"] = [c for c in columns if is_metadata_like(c)]
        columns = [c for c in columns if not is_metadata_like(c)]
        dropped["non_numeric"] = [c for c in columns if not pd.api.types.is_numeric_dtype(real[c])
                                  or pd.api.types.is_bool_dtype(real[c])]
        columns = [c for c in columns if c not in set(dropped["non_numeric"])]
        if not columns:
            raise InputError("no numeric measurement columns", file=source,
                             expected="a per-image CellProfiler table")

        values = _features(real, columns)
        complete = ~np.isnan(values).any(axis=1)
        if not complete.any():
            nan_share = np.isnan(values).mean(axis=0)
            worst = ", ".join(f"{columns[i]} ({nan_share[i]:.0%})" for i in np.argsort(-nan_share)[:5])
            raise InputError(f"every one of the {len(real)} real rows has a NaN in some feature; most often NaN: "
                             f"{worst}", file=source, expected="real sites where CellProfiler found objects")
        frame = pd.DataFrame(values[complete], columns=columns)

        # both variance filters are measured (the report gives both counts); `variance_filter` is applied
        by_filter = {}
        for name in VARIANCE_FILTERS:
            low = low_variance(frame, name, variance_threshold, relative_variance_threshold)
            remaining = [c for c in columns if c not in set(low)]
            spiky = outliers(frame[remaining], max_abs_z) if remaining else []
            by_filter[name] = (low, spiky, [c for c in remaining if c not in set(spiky)])
        dropped["low_variance"], dropped["outlier_z"], columns = by_filter[variance_filter]
        if not columns:
            raise InputError("no feature survived cleaning", file=source,
                             expected="real sites with varying measurements")

        scaler = StandardScaler().fit(frame[columns].to_numpy())
        report = {
            "n_columns_in": len(real.columns),
            "n_inferred_features": len(inferred_features(real)),
            "n_real_rows_in": len(real),
            "n_real_rows_dropped_nan": int((~complete).sum()),
            "n_real_rows_used": int(complete.sum()),
            "dropped_columns": {step: len(names) for step, names in dropped.items()},
            "kept_features": len(columns),
            "variance_filter": variance_filter,
            "kept_features_by_variance_filter": {name: len(kept) for name, (_, _, kept) in by_filter.items()},
            "low_variance_by_variance_filter": {name: len(low) for name, (low, _, _) in by_filter.items()},
            "relative_variance_threshold": relative_variance_threshold,
            "variance_threshold": variance_threshold,
            "max_abs_z": max_abs_z,
        }
        return cls(columns, scaler.mean_.copy(), scaler.scale_.copy(), variance_filter, variance_threshold,
                   relative_variance_threshold, max_abs_z, report, dropped)

    def transform(self, table: pd.DataFrame, source="table") -> tuple[pd.DataFrame, pd.Index]:
        """(Metadata_ columns + standardised kept features, index of the input rows dropped for NaN).

        CellProfiler's bookkeeping (Metadata_ExecutionTime_..., Metadata_FileName_..., ...) stays in the per-image
        tables only: the clean tables carry the manifest's metadata, so same-seed runs give identical tables."""
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise InputError(f"{len(missing)} feature column(s) the cleaner was fitted on are missing, e.g. "
                             f"{missing[:3]}", file=source, expected="the same CellProfiler pipeline as the real rows")
        values = _features(table, self.columns)
        complete = ~np.isnan(values).any(axis=1)
        scaled = (values[complete] - self.mean) / self.scale
        metadata_columns = [c for c in table.columns if c.startswith("Metadata_") and not is_bookkeeping(c)]
        metadata = table.loc[complete, metadata_columns].reset_index(drop=True)
        features = pd.DataFrame(scaled, columns=self.columns)
        return pd.concat([metadata, features], axis=1), table.index[~complete]

    def save(self, npz_path, json_path) -> None:
        arrays = {"columns": np.array(self.columns, dtype=str), "mean": self.mean, "scale": self.scale}
        meta = {"format": FORMAT, "columns": self.columns, "variance_filter": self.variance_filter,
                "variance_threshold": self.variance_threshold,
                "relative_variance_threshold": self.relative_variance_threshold, "max_abs_z": self.max_abs_z,
                "report": self.report, "dropped": self.dropped,
                "arrays": f"{Path(npz_path).name}: columns (str), mean, scale (float64), in column order"}
        fitted.save(arrays, meta, npz_path, json_path)

    @classmethod
    def load(cls, npz_path, json_path) -> "FeatureCleaner":
        meta, arrays = fitted.load(npz_path, json_path, FORMAT, "fitted feature cleaner",
                                   "`morphotrust morphology clean`")
        columns, mean, scale = arrays["columns"].tolist(), arrays["mean"], arrays["scale"]
        if columns != meta["columns"] or len(mean) != len(columns) or len(scale) != len(columns):
            raise InputError("arrays do not match the JSON's columns", file=npz_path,
                             expected=f"the arrays saved with {json_path}")
        return cls(columns, mean, scale, meta["variance_filter"], meta["variance_threshold"],
                   meta["relative_variance_threshold"], meta["max_abs_z"], meta["report"], meta["dropped"])


def _row_ids(table: pd.DataFrame, index) -> list:
    for column in ("Metadata_sample_id", "Metadata_site_id"):
        if column in table.columns:
            return table.loc[index, column].astype(str).tolist()
    return [str(i) for i in index]


def clean(real_path, generated_path, out_dir, variance_filter: str = VARIANCE_FILTER,
          variance_threshold: float = VARIANCE_THRESHOLD,
          relative_variance_threshold: float = RELATIVE_VARIANCE_THRESHOLD, max_abs_z: float = MAX_ABS_Z,
          also=()) -> dict:
    """Fit on the real per-image table, apply to the generated one and to every table in `also`
    (SOURCE_image.parquet -> SOURCE_clean.parquet); write the cleaner, clean tables and the report."""
    out_dir = Path(out_dir)
    real = pd.read_parquet(real_path)
    generated = pd.read_parquet(generated_path)
    # Real sites whose nuclei segmentation failed the gate (morphotrust.morphology.gate) are left out of the
    # cleaning and of validation. Generated images that fail it are kept (and counted): failing is what the trust
    # score should catch, and leaving them out would flatter the generator.
    real_failed = ~real[GATE_OK].astype(bool) if GATE_OK in real.columns else pd.Series(False, index=real.index)
    failed_ids = _row_ids(real, real.index[real_failed])
    real = real[~real_failed]
    generated_failed = int((~generated[GATE_OK].astype(bool)).sum()) if GATE_OK in generated.columns else None
    cleaner = FeatureCleaner.fit(real, variance_filter, variance_threshold, relative_variance_threshold, max_abs_z,
                                 source=real_path)
    real_clean, real_dropped = cleaner.transform(real, source=real_path)
    generated_clean, generated_dropped = cleaner.transform(generated, source=generated_path)
    report = dict(cleaner.report)
    report.update({
        "n_generated_rows_in": len(generated),
        "n_generated_rows_dropped_nan": len(generated_dropped),
        "generated_rows_dropped_nan": _row_ids(generated, generated_dropped),
        "real_rows_dropped_nan": _row_ids(real, real_dropped),
        "n_real_rows_failed_segmentation": len(failed_ids),
        "real_rows_failed_segmentation": failed_ids,
        "n_generated_rows_failed_segmentation": generated_failed,
    })
    cleaner.save(out_dir / "cleaner.npz", out_dir / "cleaner.json")
    write_parquet(real_clean, out_dir / "real_clean.parquet")
    write_parquet(generated_clean, out_dir / "generated_clean.parquet")
    for path in also:
        other = pd.read_parquet(path)
        other_clean, other_dropped = cleaner.transform(other, source=path)
        name = Path(path).stem.removesuffix("_image")
        report[f"n_{name}_rows_dropped_nan"] = len(other_dropped)
        write_parquet(other_clean, out_dir / f"{name}_clean.parquet")
    write_json(report, out_dir / "cleaning_report.json")
    return report
