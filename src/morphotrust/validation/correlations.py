"""Per-feature correlations: does trust selection make each CellProfiler feature track the real condition means?

For each CP feature f: r_trust(f) = Pearson r over conditions between the mean of f over the trust-accepted
generated samples of c and the mean of f over the real samples of c. r_rand(f): the same with
condition-matched random subsets (same per-condition sizes), averaged over seeds. Δ(f) = r_trust − r_rand.
Conditions without an accepted sample or without real samples are left out (both r use the same conditions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_csv
from .common import Table, load_space, reference, save_figure, settings, write_headline
from .stats import column_pearson, encode, group_means, matched_random_masks

OUTPUTS = {
    "table": "correlations.csv",
    "top_bottom": "correlations_top_bottom.csv",
    "plot": "correlations.png",
    "headline": "correlations.json",
}


def feature_correlations(reference: Table, generated: Table, n_seeds: int = 5, seed: int = 0,
                         near_zero_r: float = 0.1) -> tuple[pd.DataFrame, dict]:
    """Table with one row per feature (r_trust, r_random mean/SD over seeds, delta, near_zero_random), and
    facts about the conditions used."""
    names = np.unique(generated.conditions)
    codes = encode(generated.conditions, names)
    real_codes = encode(reference.conditions, names)
    accepted = generated.column("accepted").astype(bool)
    n_accepted = np.bincount(codes, weights=accepted, minlength=len(names))
    n_real = np.bincount(real_codes[real_codes >= 0], minlength=len(names))
    used = (n_accepted > 0) & (n_real > 0)
    known = real_codes >= 0
    real_means = group_means(reference.X[known], real_codes[known], len(names))[used]
    r_trust = column_pearson(group_means(generated.X, codes, len(names), accepted)[used], real_means)
    masks = matched_random_masks(codes, accepted, n_seeds, seed)
    r_random = np.array([column_pearson(group_means(generated.X, codes, len(names), m)[used], real_means)
                         for m in masks])
    if used.sum() < 3:  # a correlation over fewer than 3 conditions means nothing
        r_trust[:] = np.nan
        r_random[:] = np.nan
    with np.errstate(invalid="ignore"):
        r_random_mean = np.nanmean(r_random, axis=0) if np.isfinite(r_random).any() else np.full(len(r_trust), np.nan)
        r_random_sd = np.nanstd(r_random, axis=0, ddof=1) if n_seeds > 1 and np.isfinite(r_random).any() \
            else np.full(len(r_trust), np.nan)
    table = pd.DataFrame({
        "feature": generated.features,
        "r_trust": r_trust,
        "r_random": r_random_mean,
        "r_random_sd": r_random_sd,
        "delta": r_trust - r_random_mean,
        "near_zero_random": np.abs(r_random_mean) < near_zero_r,
    })
    table["rank_by_delta"] = table["delta"].rank(ascending=False, method="first").astype("Int64")
    info = {"n_conditions_used": int(used.sum()), "n_conditions": int(len(names)),
            "conditions_left_out": names[~used].tolist(),
            "flag": "" if used.sum() >= 3 else "fewer than 3 conditions with accepted and real samples"}
    return table, info


def top_bottom(table: pd.DataFrame, n_top: int) -> pd.DataFrame:
    """The n_top features that gain most (Δ highest) and the n_top that gain least / lose (Δ lowest)."""
    ranked = table.dropna(subset=["delta"]).sort_values("delta", ascending=False)
    n_top = min(n_top, (len(ranked) + 1) // 2)  # few features: split them, never list one twice
    top = ranked.head(n_top).assign(list="top")
    bottom = ranked.tail(min(n_top, len(ranked) - n_top)).iloc[::-1].assign(list="bottom")
    return pd.concat([top, bottom], ignore_index=True)[
        ["list", "feature", "r_trust", "r_random", "r_random_sd", "delta", "near_zero_random"]]


def plot_correlations(table: pd.DataFrame, extremes: pd.DataFrame, near_zero_r: float, path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    left.axvspan(-near_zero_r, near_zero_r, color="grey", alpha=0.15,
                 label=f"random selection shows no correspondence (|r| < {near_zero_r})")
    left.scatter(table["r_random"], table["r_trust"], s=8, color="tab:blue", alpha=0.5, label="CP feature")
    for name, colour in (("top", "tab:green"), ("bottom", "tab:red")):
        rows = extremes[extremes["list"] == name]
        left.scatter(rows["r_random"], rows["r_trust"], s=18, color=colour, label=f"{name} by Δ")
    left.plot([-1, 1], [-1, 1], color="black", linewidth=0.8, linestyle="--")
    left.set_xlim(-1.05, 1.05)
    left.set_ylim(-1.05, 1.05)
    left.set_xlabel("r (random generated subset vs real), per feature")
    left.set_ylabel("r (trust-accepted vs real), per feature")
    left.set_title("Do generated condition means track real ones?\n(points above the diagonal: trust helps)")
    left.legend(fontsize=7, loc="lower right")
    delta = table["delta"].dropna()
    right.hist(delta, bins=40, color="tab:blue", alpha=0.8)
    right.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    if len(delta):
        right.axvline(delta.median(), color="tab:green", label=f"median Δ = {delta.median():.3f}")
        right.legend(fontsize=8)
    right.set_xlabel("Δr = r(trust-accepted) − r(random)")
    right.set_ylabel("number of CP features")
    right.set_title("Gain in correspondence with real cells per feature")
    save_figure(fig, path)


def headline(table: pd.DataFrame, extremes: pd.DataFrame, info: dict) -> dict:
    delta = table["delta"].dropna()
    return {
        **{k: v for k, v in info.items() if k != "conditions_left_out"},
        "n_features": int(len(table)),
        "mean_r_trust": table["r_trust"].mean(), "mean_r_random": table["r_random"].mean(),
        "median_delta": delta.median() if len(delta) else np.nan,
        "fraction_features_improved": float((delta > 0).mean()) if len(delta) else np.nan,
        "top_features": extremes.loc[extremes["list"] == "top", "feature"].head(10).tolist(),
        "bottom_features": extremes.loc[extremes["list"] == "bottom", "feature"].head(10).tolist(),
        "n_near_zero_random": int(table["near_zero_random"].sum()),
        "near_zero_random_features": table.loc[table["near_zero_random"], "feature"].head(20).tolist(),
    }


def run(real_path, generated_path, trust_path, out_dir, cfg: dict | None = None) -> dict:
    cfg = settings(cfg)
    real, generated = load_space("cp", real_path, generated_path, trust_path)
    table, info = feature_correlations(reference(real, cfg["reference_splits"]), generated, cfg["n_random_seeds"],
                                       cfg["seed"], cfg["correlations"]["near_zero_r"])
    extremes = top_bottom(table, cfg["correlations"]["n_top"])
    out = Path(out_dir)
    write_csv(table, out / OUTPUTS["table"])
    write_csv(extremes, out / OUTPUTS["top_bottom"])
    plot_correlations(table, extremes, cfg["correlations"]["near_zero_r"], out / OUTPUTS["plot"])
    if info["conditions_left_out"]:
        print(f"correlations: {len(info['conditions_left_out'])} condition(s) left out (no accepted or no real "
              f"samples): {', '.join(info['conditions_left_out'][:20])}")
    result = headline(table, extremes, info)
    write_headline(result, out / OUTPUTS["headline"])
    return result
