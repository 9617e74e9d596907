"""Feature cleaning of per-image CellProfiler tables, fitted on real rows only (spec: validation.md).

Fit, in this order, on the real table:
  1. drop metadata-like columns: names containing metadata, filename, pathname, imagenumber, objectnumber,
     executiontime, moduleerror, series, frame, group_index, group_number or url (case-insensitive);
     non-numeric columns left after that (e.g. CellProfiler's MD5Digest_*) are dropped too and counted apart;
  2. drop real rows with NaN (or +-inf) in any remaining column;
  3. drop columns whose variance over the real rows is <= 1e-5 (scikit-learn VarianceThreshold semantics);
  4. drop columns where some real row has |z| > 5 (z from the real mean and population SD);
  5. StandardScaler fitted on the real rows.
The same columns, means and scales are then applied to generated rows (rows with NaN in a kept column are
dropped and reported). The number of kept features depends on the data and is reported, never assumed.
Saved as arrays (.npz) + JSON, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from .gate import OK as GATE_OK
from ..io import write_json, write_npz, write_parquet

METADATA_LIKE = ("metadata", "filename", "pathname", "imagenumber", "objectnumber", "executiontime",
                 "moduleerror", "series", "frame", "group_index", "group_number", "url")
VARIANCE_THRESHOLD = 1e-5
MAX_ABS_Z = 5.0
FORMAT = "morphotrust.feature_cleaner/1"


def is_metadata_like(name: str) -> bool:
    lowered = name.lower()
    return any(token in lowered for token in METADATA_LIKE)


def _features(table: pd.DataFrame, columns) -> np.ndarray:
    values = table[list(columns)].to_numpy(dtype=np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass
class FeatureCleaner:
    columns: list
    mean: np.ndarray
    scale: np.ndarray
    variance_threshold: float = VARIANCE_THRESHOLD
    max_abs_z: float = MAX_ABS_Z
    report: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # step -> dropped column names

    @classmethod
    def fit(cls, real: pd.DataFrame, variance_threshold: float = VARIANCE_THRESHOLD,
            max_abs_z: float = MAX_ABS_Z, source="real table") -> "FeatureCleaner":
        dropped = {}
        columns = list(real.columns)
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
        values = values[complete]

        variance = values.var(axis=0)
        low = variance <= variance_threshold
        dropped["low_variance"] = [c for c, d in zip(columns, low) if d]
        columns = [c for c, d in zip(columns, low) if not d]
        values = values[:, ~low]

        z = (values - values.mean(axis=0)) / values.std(axis=0)
        outlier = (np.abs(z) > max_abs_z).any(axis=0)
        dropped["outlier_z"] = [c for c, d in zip(columns, outlier) if d]
        columns = [c for c, d in zip(columns, outlier) if not d]
        values = values[:, ~outlier]
        if not columns:
            raise InputError("no feature survived cleaning", file=source,
                             expected="real sites with varying measurements")

        scaler = StandardScaler().fit(values)
        report = {
            "n_columns_in": len(real.columns),
            "n_real_rows_in": len(real),
            "n_real_rows_dropped_nan": int((~complete).sum()),
            "n_real_rows_used": int(complete.sum()),
            "dropped_columns": {step: len(names) for step, names in dropped.items()},
            "kept_features": len(columns),
            "variance_threshold": variance_threshold,
            "max_abs_z": max_abs_z,
        }
        return cls(columns, scaler.mean_.copy(), scaler.scale_.copy(), variance_threshold, max_abs_z, report,
                   dropped)

    def transform(self, table: pd.DataFrame, source="table") -> tuple[pd.DataFrame, pd.Index]:
        """(Metadata_ columns + standardised kept features, index of the input rows dropped for NaN)."""
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise InputError(f"{len(missing)} feature column(s) the cleaner was fitted on are missing, e.g. "
                             f"{missing[:3]}", file=source, expected="the same CellProfiler pipeline as the real rows")
        values = _features(table, self.columns)
        complete = ~np.isnan(values).any(axis=1)
        scaled = (values[complete] - self.mean) / self.scale
        metadata = table.loc[complete, [c for c in table.columns if c.startswith("Metadata_")]].reset_index(drop=True)
        features = pd.DataFrame(scaled, columns=self.columns)
        return pd.concat([metadata, features], axis=1), table.index[~complete]

    def save(self, npz_path, json_path) -> None:
        write_npz({"columns": np.array(self.columns, dtype=str), "mean": self.mean, "scale": self.scale}, npz_path)
        write_json({"format": FORMAT, "columns": self.columns, "variance_threshold": self.variance_threshold,
                    "max_abs_z": self.max_abs_z, "report": self.report, "dropped": self.dropped,
                    "arrays": f"{Path(npz_path).name}: columns (str), mean, scale (float64), in column order"},
                   json_path)

    @classmethod
    def load(cls, npz_path, json_path) -> "FeatureCleaner":
        meta = json.loads(Path(json_path).read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"format {meta.get('format')!r}", file=json_path, expected=FORMAT)
        with np.load(npz_path, allow_pickle=False) as arrays:
            columns, mean, scale = arrays["columns"].tolist(), arrays["mean"], arrays["scale"]
        if columns != meta["columns"] or len(mean) != len(columns) or len(scale) != len(columns):
            raise InputError("arrays do not match the JSON's columns", file=npz_path,
                             expected=f"the arrays saved with {json_path}")
        return cls(columns, mean, scale, meta["variance_threshold"], meta["max_abs_z"], meta["report"],
                   meta["dropped"])


def _row_ids(table: pd.DataFrame, index) -> list:
    for column in ("Metadata_sample_id", "Metadata_site_id"):
        if column in table.columns:
            return table.loc[index, column].astype(str).tolist()
    return [str(i) for i in index]


def clean(real_path, generated_path, out_dir, variance_threshold: float = VARIANCE_THRESHOLD,
          max_abs_z: float = MAX_ABS_Z) -> dict:
    """Fit on the real per-image table, apply to both; write the cleaner, clean tables and the report."""
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
    cleaner = FeatureCleaner.fit(real, variance_threshold, max_abs_z, source=real_path)
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
    write_json(report, out_dir / "cleaning_report.json")
    return report
