"""Graded shift: does trust fall as a condition moves away from what the generator was trained on?

Training support = the (cell type, siRNA) pairs of the real train-split rows of the seen arm. For each
generated condition:
- hamming_distance: the fewest attributes (cell type, siRNA) in which it differs from any training pair —
  0 for a seen condition, 1 for a new combination (or one new value), 2 when neither value was trained;
- n_novel_values: how many of its attribute values never occur in the training support (0 for a new
  combination of trained values, 1 when e.g. its siRNA was never trained with any cell type).
Mean trust T per condition is then compared across these levels (Spearman ρ of Hamming distance vs mean T).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import write_csv
from .common import ANALYSED_ARMS, _read_parquet, _require_columns, parquet_columns, save_figure, write_headline
from .stats import spearman

ATTRIBUTES = ("Metadata_cell_type", "Metadata_sirna_id")
OUTPUTS = {"table": "graded_shift.csv", "plot": "graded_shift.png", "headline": "graded_shift.json"}


def hamming_to_support(conditions: pd.DataFrame, support: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(Hamming distance to the nearest support pair, number of values absent from the support) for each row
    of `conditions`; both tables hold the ATTRIBUTES columns. NaN distances when the support is empty."""
    values = np.stack([np.asarray(conditions[a].astype(str), dtype=str) for a in ATTRIBUTES], axis=1)
    trained = np.unique(np.stack([np.asarray(support[a].astype(str), dtype=str) for a in ATTRIBUTES], axis=1), axis=0) \
        if len(support) else np.empty((0, len(ATTRIBUTES)), dtype=str)
    novel = sum((~np.isin(values[:, k], trained[:, k])).astype(int) for k in range(len(ATTRIBUTES)))
    if not len(trained):
        return np.full(len(values), np.nan), novel
    differing = (values[:, None, :] != trained[None, :, :]).sum(axis=2)  # (conditions, support pairs)
    return differing.min(axis=1).astype(float), novel


def graded_shift(scores: pd.DataFrame, support: pd.DataFrame) -> pd.DataFrame:
    """Per generated condition: attributes, Hamming distance and novel values, mean T / R / F, acceptance."""
    scores = scores[scores["Metadata_arm"].isin(ANALYSED_ARMS)]
    grouped = scores.groupby("Metadata_condition", sort=True)
    table = grouped.agg(arm=("Metadata_arm", "first"), cell_type=("Metadata_cell_type", "first"),
                        sirna_id=("Metadata_sirna_id", "first"), n_generated=("T", "size"), mean_T=("T", "mean"),
                        sd_T=("T", "std"), mean_R=("R", "mean"), mean_F=("F", "mean"),
                        acceptance_rate=("accepted", "mean")).reset_index()
    table = table.rename(columns={"Metadata_condition": "condition"})
    hamming, novel = hamming_to_support(
        table.rename(columns={"cell_type": ATTRIBUTES[0], "sirna_id": ATTRIBUTES[1]}), support)
    table.insert(4, "hamming_distance", hamming)
    table.insert(5, "n_novel_values", novel)
    return table


def plot_shift(table: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    rng = np.random.default_rng(0)  # horizontal jitter only
    for novel, marker in ((0, "o"), (1, "^"), (2, "s")):
        rows = table[table["n_novel_values"] == novel]
        if len(rows):
            x = rows["hamming_distance"] + rng.uniform(-0.12, 0.12, len(rows))
            left.scatter(x, rows["mean_T"], marker=marker, s=22, alpha=0.8,
                         label=f"{novel} attribute value(s) never trained")
            right.scatter(x, rows["acceptance_rate"], marker=marker, s=22, alpha=0.8)
    levels = table.groupby("hamming_distance")
    left.plot(levels["mean_T"].mean().index, levels["mean_T"].mean().to_numpy(), "k_", markersize=30, mew=2,
              label="mean over conditions")
    for ax in (left, right):
        ax.set_xticks([0, 1, 2], ["0\n(seen)", "1\n(new combination)", "2\n(neither value trained)"])
        ax.set_xlabel("attributes differing from the nearest trained condition")
    left.set_ylabel("mean trust score T per condition\n(higher = less trusted)")
    left.set_title("Mean trust per condition by distance from training", fontsize=10)
    left.legend(fontsize=7)
    right.set_ylabel("fraction of generated samples accepted")
    right.set_title("Acceptance by distance from training", fontsize=10)
    save_figure(fig, path)


def headline(table: pd.DataFrame) -> dict:
    rho, p, n = spearman(table["hamming_distance"], table["mean_T"])
    levels = {}
    for level, rows in table.groupby("hamming_distance"):
        levels[str(int(level))] = {"n_conditions": len(rows), "mean_T": rows["mean_T"].mean(),
                                   "acceptance_rate": rows["acceptance_rate"].mean()}
    return {"by_hamming_distance": levels, "spearman_hamming_vs_mean_T": rho, "spearman_p": p, "n_conditions": n}


def read_support(real_paths) -> pd.DataFrame:
    """Training support: attribute columns of real train-split rows of the seen arm."""
    paths = [real_paths] if isinstance(real_paths, (str, Path)) else list(real_paths)
    parts = []
    for path in paths:
        available = parquet_columns(path)
        wanted = [*ATTRIBUTES, "Metadata_arm"] + (["Metadata_split"] if "Metadata_split" in available else [])
        missing = [c for c in wanted if c not in available]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}", file=path,
                             expected="the real table's Metadata_ columns (docs/design.md)")
        df = pd.read_parquet(path, columns=wanted)
        if "Metadata_split" not in df.columns:
            df["Metadata_split"] = Path(path).stem.removeprefix("real_")
        parts.append(df)
    real = pd.concat(parts, ignore_index=True)
    return real[(real["Metadata_split"] == "train") & (real["Metadata_arm"] == "seen")]


def run(real_paths, trust_path, out_dir) -> dict:
    scores = _read_parquet(trust_path)
    _require_columns(scores, ["Metadata_condition", "Metadata_arm", *ATTRIBUTES, "T", "R", "F", "accepted"], trust_path)
    table = graded_shift(scores, read_support(real_paths))
    out = Path(out_dir)
    write_csv(table, out / OUTPUTS["table"])
    plot_shift(table, out / OUTPUTS["plot"])
    result = headline(table)
    write_headline(result, out / OUTPUTS["headline"])
    return result
