"""What every validation analysis shares: its settings, its input tables (read and checked where they
enter), and how it writes figures and headline numbers.

Input contracts (written by other stages):
- CellProfiler space: `results/morphology/{real,generated}_clean.parquet`: `Metadata_*` columns plus
  standardised CP features (every other column).
- Encoder space: `results/features/real_{split}.parquet`, `results/features/generated.parquet`:
  `Metadata_*` columns plus `Feature_0000 ...` (raw, not L2-normalised).
- Trust: `results/trust/generated_scores.parquet`: `Metadata_sample_id` plus R, F, T, accepted (and F_<attr>).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ..config import schema_defaults  # noqa: E402
from ..errors import InputError  # noqa: E402
from ..io import atomic_path, read_json, write_json  # noqa: E402

ANALYSED_ARMS = ("seen", "unseen")  # same-plate controls (arm `control`) are not conditions here
SPLITS = ("train", "calibration", "evaluation")
TRUST_COLUMNS = ("R", "F", "T", "accepted")
SPACES = ("cp", "encoder")
SPACE_NAMES = {"cp": "CellProfiler features", "encoder": "encoder features"}

def settings(cfg: dict | None = None) -> dict:
    """The `validation` config section with the schema's defaults filled in for missing keys."""
    merged = schema_defaults("validation")
    for key, value in (cfg or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


@dataclass
class Table:
    """One feature space's rows: metadata (plus trust columns for generated rows) and the feature matrix."""

    meta: pd.DataFrame  # RangeIndex, row i describes X[i]
    X: np.ndarray  # (n, p) float64
    features: list[str]

    def __len__(self) -> int:
        return len(self.meta)

    def subset(self, mask) -> "Table":
        rows = np.asarray(mask)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        return Table(self.meta.iloc[rows].reset_index(drop=True), self.X[rows], self.features)

    def column(self, name: str) -> np.ndarray:
        return self.meta[name].to_numpy()

    @property
    def conditions(self) -> np.ndarray:
        return self.meta["Metadata_condition"].astype(str).to_numpy()


def _read_parquet(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path, expected="the output of an earlier workflow stage")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read as parquet ({error})", file=path) from None


def _require_columns(df: pd.DataFrame, columns, path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path,
                         expected="the columns of the data contract in docs/design.md")


def read_table(paths, space: str, source: str) -> Table:
    """Read one or more feature tables of one space (`cp`: every non-Metadata_ column is a feature;
    `encoder`: columns `Feature_*`) for `source` `real` or `generated`, and check them.

    Real rows need `Metadata_split` (taken from a `real_<split>.parquet` file name if the column is absent);
    generated rows need `Metadata_sample_id`. Real rows must be finite (they were cleaned); generated rows
    with a non-finite feature are dropped and counted in `Table.meta.attrs["dropped_nonfinite"]`.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    needed = ["Metadata_condition", "Metadata_arm", "Metadata_cell_type"]
    needed += ["Metadata_split"] if source == "real" else ["Metadata_sample_id"]
    parts, names, dropped = [], None, 0
    for path in paths:
        df = _read_parquet(path)
        if source == "real" and "Metadata_split" not in df.columns and Path(path).stem.startswith("real_"):
            df["Metadata_split"] = Path(path).stem.removeprefix("real_")
        _require_columns(df, needed, path)
        if space == "cp":
            feats = [c for c in df.columns if not c.startswith("Metadata_")]
        else:
            feats = encoder_columns(df, path)
        if not feats:
            raise InputError("no feature columns", file=path,
                             expected="CellProfiler feature columns" if space == "cp" else "Feature_0000 ... columns")
        if names is None:
            names = feats
        elif feats != names:
            raise InputError("feature columns differ from those of the first table", file=path,
                             where=f"first differing column {_first_difference(names, feats)}",
                             expected=f"the same columns as {paths[0]}")
        non_numeric = [c for c in feats if not pd.api.types.is_numeric_dtype(df[c])]
        if non_numeric:
            raise InputError(f"non-numeric feature column(s) {', '.join(non_numeric[:5])}", file=path,
                             expected="numbers (metadata columns must start with Metadata_)")
        X = df[feats].to_numpy(dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            if source == "real":
                bad = df.index[~finite][:5].tolist()
                raise InputError(f"{int((~finite).sum())} real row(s) with NaN or infinite features", file=path,
                                 where=f"rows {bad}", expected="finite values in a cleaned table")
            dropped += int((~finite).sum())
            df, X = df.loc[finite], X[finite]
        meta = df[[c for c in df.columns if c.startswith("Metadata_")]].reset_index(drop=True)
        parts.append((meta, X))
    meta = pd.concat([m for m, _ in parts], ignore_index=True)
    if source == "generated" and meta["Metadata_sample_id"].duplicated().any():
        dup = meta.loc[meta["Metadata_sample_id"].duplicated(), "Metadata_sample_id"].iloc[0]
        raise InputError("duplicate Metadata_sample_id", file=paths[0], where=f"sample {dup!r}",
                         expected="one row per generated sample")
    meta.attrs["dropped_nonfinite"] = dropped
    return Table(meta, np.concatenate([x for _, x in parts]), names)


def encoder_columns(df: pd.DataFrame, path) -> list:
    """The `Feature_*` columns the encoder produced. A table with per-stain image statistics appended
    (features.statistics append; `feature_blocks` in its .json sidecar) keeps only its encoder block: the
    encoder-space analyses (KID, distances, deciles) stay in the encoder's space, as the spec has them."""
    feats = [c for c in df.columns if c.startswith("Feature_")]
    sidecar = Path(path).with_suffix(".json")
    blocks = read_json(sidecar).get("feature_blocks") if sidecar.is_file() else None
    encoder = [b for b in blocks or [] if b["name"].startswith("encoder")]
    if not encoder or len(encoder) == len(blocks):  # encoder only, or statistics only: every column
        return feats
    return feats[min(b["start"] for b in encoder):max(b["stop"] for b in encoder)]


def _first_difference(a, b):
    for x, y in zip(a, b):
        if x != y:
            return f"{y!r} (first table: {x!r})"
    return f"count {len(b)} (first table: {len(a)})"


def read_trust(path) -> pd.DataFrame:
    """Per-sample trust scores: `Metadata_sample_id`, R, F, T, accepted (bool) and any F_<attr> columns."""
    df = _read_parquet(path)
    _require_columns(df, ["Metadata_sample_id", *TRUST_COLUMNS], path)
    for column in ("R", "F", "T"):
        if not pd.api.types.is_numeric_dtype(df[column]) or not np.isfinite(df[column].to_numpy(float)).all():
            raise InputError(f"column {column} has non-numeric or non-finite values", file=path,
                             expected="a finite score for every generated sample")
    if not pd.api.types.is_bool_dtype(df["accepted"]):
        raise InputError("column accepted is not boolean", file=path, expected="True / False per sample")
    if df["Metadata_sample_id"].duplicated().any():
        dup = df.loc[df["Metadata_sample_id"].duplicated(), "Metadata_sample_id"].iloc[0]
        raise InputError("duplicate Metadata_sample_id", file=path, where=f"sample {dup!r}")
    keep = ["Metadata_sample_id", *TRUST_COLUMNS] + [c for c in df.columns if c.startswith("F_")]
    return df[keep].reset_index(drop=True)


def attach_trust(generated: Table, trust: pd.DataFrame, trust_path) -> Table:
    """Add the trust columns to generated rows (join on Metadata_sample_id). Every generated row must have
    a score; scored samples absent from the feature table (e.g. CellProfiler failed on them) are counted
    in `meta.attrs["missing_features"]`."""
    meta = generated.meta.drop(columns=[c for c in trust.columns if c != "Metadata_sample_id"], errors="ignore")
    ids = meta["Metadata_sample_id"].astype(str)
    lookup = trust.assign(Metadata_sample_id=trust["Metadata_sample_id"].astype(str)).set_index("Metadata_sample_id")
    missing = ~ids.isin(lookup.index)
    if missing.any():
        raise InputError(f"{int(missing.sum())} generated sample(s) have no trust score", file=trust_path,
                         where=f"e.g. Metadata_sample_id {ids[missing].iloc[0]!r}",
                         expected="scores for the same generated samples as the feature tables")
    joined = pd.concat([meta, lookup.loc[ids.to_numpy()].reset_index(drop=True)], axis=1)
    joined["accepted"] = joined["accepted"].astype(bool)
    joined.attrs = {**generated.meta.attrs, "missing_features": int(len(trust) - len(ids))}
    return Table(joined, generated.X, generated.features)


def load_space(space: str, real_paths, generated_path, trust_path) -> tuple[Table, Table]:
    """Real and generated rows of the analysed arms (seen, unseen) in one feature space, generated rows
    carrying their trust scores."""
    if space not in SPACES:
        raise InputError(f"unknown feature space {space!r}", expected=" or ".join(SPACES))
    real = read_table(real_paths, space, "real")
    generated = attach_trust(read_table(generated_path, space, "generated"), read_trust(trust_path), trust_path)
    if real.features != generated.features:
        raise InputError("generated feature columns differ from the real ones", file=generated_path,
                         where=f"first differing column {_first_difference(real.features, generated.features)}",
                         expected="the same feature columns, in the same order, as the real table")
    real_arms = real.meta["Metadata_arm"].isin(ANALYSED_ARMS).to_numpy()
    gen_arms = generated.meta["Metadata_arm"].isin(ANALYSED_ARMS).to_numpy()
    attrs = generated.meta.attrs
    if len(generated) and not gen_arms.any():
        raise InputError("no generated samples of a seen or unseen condition", file=generated_path,
                         expected="Metadata_arm values seen / unseen")
    if not len(generated):  # e.g. CellProfiler found no cells in any generated image: the cleaning dropped them all
        print(f"WARNING: {generated_path} has no rows: no generated image has {space} features to validate",
              flush=True)
    generated = generated.subset(gen_arms)
    generated.meta.attrs = attrs
    return real.subset(real_arms), generated


def reference(real: Table, splits) -> Table:
    """Real rows used as ground truth for a condition: those of the configured splits."""
    return real.subset(real.meta["Metadata_split"].isin(list(splits)).to_numpy())


def save_figure(fig, path) -> None:
    """Write a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(fig)


def write_headline(headline: dict, path) -> None:
    """The analysis's headline numbers (collected into results/validation/summary.json)."""
    write_json(_finite_or_none(headline), path)


def _finite_or_none(value):
    """JSON has no NaN: write missing numbers as null."""
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def parquet_columns(path) -> list[str]:
    """Column names of a parquet file without reading its data."""
    try:
        return pq.read_schema(path).names
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
