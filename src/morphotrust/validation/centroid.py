"""Real-spread-normalised centroid distance z(x) in CellProfiler space, and trust-accepted vs random.

For a generated sample x of condition c, z(x) = (d(x) − μ_RR(c)) / σ_RR(c): how far x lies from the real
centroid of c, in units of how far real samples of c lie from it. z = 0 is as close as a real sample.

Two definitions (config validation.centroid.method):

- `leave_one_out` (default, unbiased): like is compared with like. Real-to-real: d_j = ‖x_j − μ_−j‖, the
  distance of each real sample to the centroid of the other n − 1 real samples; μ_RR, σ_RR their mean and
  SD. Generated: d(x) = mean over j of ‖x − μ_−j‖, the distance to centroids of the same n − 1 samples. For a
  generator that samples the real distribution, d(x) and d_j then have the same distribution at any n, so
  mean z ≈ 0 (tests: |mean z| < 0.3 at 4, 24 and 100 real samples in 2,500 dimensions).
- `half_split` (spec / paper): d(x) = ‖x − μ_c‖ to the centroid of all n real samples; μ_RR, σ_RR from T
  random half-splits (half B to the centroid of half A, pooled). Biased low: the full centroid is closer to
  any new sample than a half centroid is, by a margin that grows with the dimension, so a perfect generator
  gets z ≈ −7 at 4 real samples per condition and −1.6 at 24 in ~2,500 dimensions
  (benchmarks/centroid_z_bias.py).
Ranking (`ranking_by_arm`): per arm, the Spearman ρ between T (or any per-sample score, lower = more trusted) and
z over every generated image CellProfiler measured, with a percentile bootstrap 95% interval (images resampled
with replacement): positive = the score orders images the way their distance from real cells does.
Conditions with fewer than `min_real` real samples are flagged; `half_split` then takes the spread from
distances of the real samples to their full centroid; `leave_one_out` still needs 3 (two leave-one-out
distances of 2 samples are equal).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathlib import Path

from ..io import write_csv
from .common import ANALYSED_ARMS, Table, load_space, reference, save_figure, settings, write_headline
from .stats import bootstrap_mean_difference, bootstrap_spearman, encode, group_indices, matched_random_masks

PER_CONDITION_COLUMNS = ["condition", "arm", "n_real", "n_generated", "real_spread_mean", "real_spread_sd", "flag"]
OUTPUTS = {
    "summary": "centroid.csv",
    "per_condition": "centroid_per_condition.csv",
    "per_sample": "centroid_per_sample.csv",
    "ranking": "centroid_ranking.csv",
    "plot": "centroid.png",
    "headline": "centroid.json",
}


METHODS = ("leave_one_out", "half_split")
SUMMARY_COLUMNS = ["arm", "metric", "n_conditions", "n_accepted", "n_random_pooled", "mean_accepted", "mean_random",
                   "delta", "ci_low", "ci_high", "excess_accepted", "excess_random", "relative_reduction",
                   "n_undefined_z"]


def real_spread(X: np.ndarray, n_splits: int, min_real: int, rng: np.random.Generator) -> tuple[float, float, str]:
    """(μ_RR, σ_RR, flag) of one condition's real samples X by half-splits (method `half_split`)."""
    n = len(X)
    if n == 0:
        return np.nan, np.nan, "no real samples"
    if n < min_real:
        d = np.linalg.norm(X - X.mean(axis=0), axis=1)
        if n < 2:
            return float(d.mean()), np.nan, "one real sample: no real spread, z undefined"
        return (float(d.mean()), float(d.std(ddof=1)),
                f"few real samples ({n} < {min_real}): spread from distances to the full centroid")
    half = n // 2
    splits = np.argsort(rng.random((n_splits, n)), axis=1)
    centroids = X[splits[:, :half]].mean(axis=1)  # (splits, p): centroid of half A
    d = np.linalg.norm(X[splits[:, half:]] - centroids[:, None, :], axis=2).ravel()  # half B, pooled
    return float(d.mean()), float(d.std(ddof=1)), ""


def leave_one_out_centroids(X: np.ndarray) -> np.ndarray:
    """(n, p): row j is the centroid of X without row j."""
    n = len(X)
    return (X.sum(axis=0) - X) / (n - 1)


def leave_one_out_spread(X: np.ndarray, min_real: int) -> tuple[float, float, str]:
    """(μ_RR, σ_RR, flag) from d_j = ‖x_j − μ_−j‖ (method `leave_one_out`)."""
    n = len(X)
    if n == 0:
        return np.nan, np.nan, "no real samples"
    if n == 1:
        return np.nan, np.nan, "one real sample: no real spread, z undefined"
    if n == 2:
        return np.nan, np.nan, "two real samples: a leave-one-out spread needs 3, z undefined"
    d = np.linalg.norm(X - leave_one_out_centroids(X), axis=1)
    flag = f"few real samples ({n} < {min_real})" if n < min_real else ""
    return float(d.mean()), float(d.std(ddof=1)), flag


def distance_to_leave_one_out_centroids(Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Mean over j of ‖y − μ_−j‖ for each row y of Y (μ_−j: centroid of the real X without row j)."""
    centroids = leave_one_out_centroids(X)
    squared = (Y ** 2).sum(axis=1)[:, None] - 2.0 * Y @ centroids.T + (centroids ** 2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(squared, 0.0)).mean(axis=1)


def centroid_z(reference: Table, generated: Table, n_half_splits: int = 10, min_real: int = 4,
               seed: int = 0, method: str = "leave_one_out") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-sample d and z of every generated sample, and the per-condition real spread.

    `reference`: real rows (ground truth); `generated`: generated rows with trust columns (T, accepted);
    `method`: `leave_one_out` (unbiased) or `half_split` (spec), see the module docstring.
    """
    if method not in METHODS:
        raise ValueError(f"centroid method must be one of {METHODS}, not {method!r}")
    names = np.unique(generated.conditions)
    gen_codes = encode(generated.conditions, names)
    real_codes = encode(reference.conditions, names)
    gen_groups, real_groups = group_indices(gen_codes, len(names)), group_indices(real_codes, len(names))
    distance = np.full(len(generated), np.nan)
    spread_mean = np.full(len(generated), np.nan)
    z = np.full(len(generated), np.nan)
    rows = []
    for code, name in enumerate(names):
        g, r = gen_groups[code], real_groups[code]
        X_real = reference.X[r]
        if method == "leave_one_out":
            mu_rr, sigma_rr, flag = leave_one_out_spread(X_real, min_real)
        else:
            mu_rr, sigma_rr, flag = real_spread(X_real, n_half_splits, min_real, np.random.default_rng([seed, code]))
        if method == "leave_one_out" and np.isfinite(mu_rr):
            distance[g] = distance_to_leave_one_out_centroids(generated.X[g], X_real)
        elif method == "half_split" and len(r):
            distance[g] = np.linalg.norm(generated.X[g] - X_real.mean(axis=0), axis=1)
        if np.isfinite(distance[g]).any():
            spread_mean[g] = mu_rr
            if np.isfinite(sigma_rr) and sigma_rr > 0:
                z[g] = (distance[g] - mu_rr) / sigma_rr
            elif not flag:
                flag = "real samples identical: zero spread, z undefined"
        rows.append({"condition": name, "arm": generated.meta["Metadata_arm"].iloc[g[0]], "n_real": len(r),
                     "n_generated": len(g), "real_spread_mean": mu_rr, "real_spread_sd": sigma_rr, "flag": flag})
    per_sample = pd.DataFrame({
        "sample_id": generated.column("Metadata_sample_id"),
        "condition": generated.conditions,
        "arm": generated.column("Metadata_arm"),
        "T": generated.column("T"),
        "accepted": generated.column("accepted").astype(bool),
        "distance": distance,
        "excess_distance": distance - spread_mean,
        "z": z,
    })
    return per_sample, pd.DataFrame(rows, columns=PER_CONDITION_COLUMNS)  # no rows: no measurable generated image


def accepted_vs_random(per_sample: pd.DataFrame, n_seeds: int = 5, n_bootstrap: int = 2000,
                       seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Trust-accepted samples vs condition-matched random subsets of the same per-condition sizes.

    Returns the summary table (one row per arm × metric) and the `(n_seeds, n)` random masks over
    `per_sample` rows (False where z is undefined). Δ = mean(accepted) − mean(random, seeds pooled), with a
    percentile bootstrap 95% interval; relative_reduction = share of the random subsets' excess over the
    real-to-real spread that trust selection removes (excess: z itself, or d − μ_RR for distances).
    """
    valid = np.isfinite(per_sample["z"].to_numpy())
    names = np.unique(per_sample["condition"].to_numpy().astype(str))
    codes = encode(per_sample["condition"], names)
    accepted = per_sample["accepted"].to_numpy() & valid
    masks = np.zeros((n_seeds, len(per_sample)), dtype=bool)
    if valid.any():
        masks[:, valid] = matched_random_masks(codes[valid], accepted[valid], n_seeds, seed)
    arm = per_sample["arm"].to_numpy().astype(str)
    rng = np.random.default_rng([seed, 2000])
    rows = []
    for arm_name in ("all", *ANALYSED_ARMS):
        in_arm = np.ones(len(arm), bool) if arm_name == "all" else arm == arm_name
        if not (in_arm & valid).any():
            continue
        for metric, excess_column in (("z", "z"), ("distance", "excess_distance")):
            values = per_sample[metric].to_numpy()
            excess = per_sample[excess_column].to_numpy()
            chosen = accepted & in_arm
            random_rows = np.concatenate([np.flatnonzero(m & in_arm) for m in masks])
            delta, low, high = bootstrap_mean_difference(values[chosen], values[random_rows], n_bootstrap, rng)
            excess_random = excess[random_rows].mean() if len(random_rows) else np.nan
            excess_accepted = excess[chosen].mean() if chosen.any() else np.nan
            rows.append({
                "arm": arm_name, "metric": metric,
                "n_conditions": int(len(np.unique(codes[chosen]))),
                "n_accepted": int(chosen.sum()), "n_random_pooled": int(len(random_rows)),
                "mean_accepted": values[chosen].mean() if chosen.any() else np.nan,
                "mean_random": values[random_rows].mean() if len(random_rows) else np.nan,
                "delta": delta, "ci_low": low, "ci_high": high,
                "excess_accepted": excess_accepted, "excess_random": excess_random,
                "relative_reduction": ((excess_random - excess_accepted) / excess_random
                                       if excess_random > 0 else np.nan),
                "n_undefined_z": int((in_arm & ~valid).sum()),
            })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS), masks  # no rows when no z is defined


RANKING_COLUMNS = ["arm", "score", "n_measured", "spearman_rho", "ci_low", "ci_high"]


def ranking_by_arm(per_sample: pd.DataFrame, score: str = "T", n_bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per arm (all, seen, unseen): Spearman ρ of the per-sample `score` column vs z over the images with a z, and
    its percentile bootstrap 95% interval (module docstring). The same arguments give the same numbers for any
    score (the scorer comparison calls this for every score)."""
    z = per_sample["z"].to_numpy(dtype=float)
    values = per_sample[score].to_numpy(dtype=float)
    arm = per_sample["arm"].to_numpy().astype(str)
    rows = []
    for index, arm_name in enumerate(("all", *ANALYSED_ARMS)):
        in_arm = np.ones(len(arm), bool) if arm_name == "all" else arm == arm_name
        if not (in_arm & np.isfinite(z)).any():
            continue
        rho, low, high, n = bootstrap_spearman(values[in_arm], z[in_arm], n_bootstrap,
                                               np.random.default_rng([seed, 4000, index]))
        rows.append({"arm": arm_name, "score": score, "n_measured": n, "spearman_rho": rho, "ci_low": low,
                     "ci_high": high})
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def per_condition_comparison(per_sample: pd.DataFrame, per_condition: pd.DataFrame,
                             masks: np.ndarray) -> pd.DataFrame:
    """Add acceptance and mean z of all / accepted / random samples to the per-condition table."""
    names = per_condition["condition"].to_numpy().astype(str)
    codes = encode(per_sample["condition"], names)
    z = np.nan_to_num(per_sample["z"].to_numpy(), nan=0.0)
    valid = np.isfinite(per_sample["z"].to_numpy())
    accepted = per_sample["accepted"].to_numpy()

    def mean_z(mask):
        count = np.bincount(codes, weights=mask, minlength=len(names))
        total = np.bincount(codes, weights=z * mask, minlength=len(names))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan)

    out = per_condition.copy()
    out["n_accepted"] = np.bincount(codes, weights=accepted, minlength=len(names)).astype(int)
    out["acceptance_rate"] = out["n_accepted"] / out["n_generated"]
    out["mean_z"] = mean_z(valid.astype(float))
    out["mean_z_accepted"] = mean_z((accepted & valid).astype(float))
    out["mean_z_random"] = np.mean([mean_z(m.astype(float)) for m in masks], axis=0) if len(masks) else np.nan
    order = ["condition", "arm", "n_real", "n_generated", "n_accepted", "acceptance_rate", "real_spread_mean",
             "real_spread_sd", "mean_z", "mean_z_accepted", "mean_z_random", "flag"]
    return out[order]


def plot_centroid(per_sample: pd.DataFrame, masks: np.ndarray, summary: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    z = per_sample["z"].to_numpy()
    arm = per_sample["arm"].to_numpy().astype(str)
    accepted = per_sample["accepted"].to_numpy() & np.isfinite(z)
    groups, labels = [], []
    for arm_name in ANALYSED_ARMS:
        in_arm = arm == arm_name
        if not (in_arm & np.isfinite(z)).any():
            continue
        random_rows = np.concatenate([np.flatnonzero(m & in_arm) for m in masks])
        groups += [z[accepted & in_arm], z[random_rows]]
        labels += [f"{arm_name}\naccepted", f"{arm_name}\nrandom"]
    if groups:
        left.boxplot([g if len(g) else [np.nan] for g in groups], showfliers=False)
        left.set_xticks(range(1, len(labels) + 1), labels)
    left.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="typical real-to-real spread (z = 0)")
    left.set_ylabel("distance to the real centroid, z\n(in units of real-to-real spread)")
    left.set_title("How far generated cells lie from real cells of their condition\n"
                   "(trust-accepted vs random subsets of the same size per condition)", fontsize=10)
    left.legend(loc="upper right", fontsize=8)
    rows = summary[summary["metric"] == "z"]
    if not len(rows):
        right.text(0.5, 0.5, "z undefined for every condition\n(see the flags in centroid_per_condition.csv)",
                   ha="center", va="center", transform=right.transAxes)
    y = np.arange(len(rows))
    right.errorbar(rows["delta"], y, xerr=[rows["delta"] - rows["ci_low"], rows["ci_high"] - rows["delta"]],
                   fmt="o", color="tab:blue", capsize=4)
    right.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    right.set_yticks(y, rows["arm"].tolist())
    right.invert_yaxis()
    right.set_xlabel("Δz = accepted − random (95% bootstrap CI)")
    right.set_title("Trust selection effect\n(negative = accepted cells look more real)")
    save_figure(fig, path)


def headline(summary: pd.DataFrame, per_condition: pd.DataFrame, ranking: pd.DataFrame | None = None) -> dict:
    out = {}
    for row in summary[summary["metric"] == "z"].itertuples():
        out[row.arm] = {"delta_z": row.delta, "ci_low": row.ci_low, "ci_high": row.ci_high,
                        "mean_z_accepted": row.mean_accepted, "mean_z_random": row.mean_random,
                        "relative_reduction_of_excess_z": row.relative_reduction, "n_accepted": row.n_accepted}
    for row in summary[summary["metric"] == "distance"].itertuples():
        out[row.arm].update({"delta_distance": row.delta, "delta_distance_ci": [row.ci_low, row.ci_high],
                             "relative_reduction_of_excess_distance": row.relative_reduction})
    for row in (ranking if ranking is not None else pd.DataFrame(columns=RANKING_COLUMNS)).itertuples():
        out.setdefault(row.arm, {}).update({"spearman_T_z": row.spearman_rho, "spearman_T_z_ci": [row.ci_low, row.ci_high],
                                            "n_measured": row.n_measured})
    out["n_conditions"] = int(len(per_condition))
    out["n_flagged_conditions"] = int((per_condition["flag"] != "").sum())
    return out


def run(real_path, generated_path, trust_path, out_dir, cfg: dict | None = None) -> dict:
    """Read the CP tables and trust scores, write every centroid output to `out_dir`, return the headline."""
    cfg = settings(cfg)
    real, generated = load_space("cp", real_path, generated_path, trust_path)
    per_sample, per_condition = centroid_z(reference(real, cfg["reference_splits"]), generated,
                                           cfg["centroid"]["n_half_splits"], cfg["centroid"]["min_real"], cfg["seed"],
                                           cfg["centroid"]["method"])
    summary, masks = accepted_vs_random(per_sample, cfg["n_random_seeds"], cfg["centroid"]["n_bootstrap"], cfg["seed"])
    per_condition = per_condition_comparison(per_sample, per_condition, masks)
    ranking = ranking_by_arm(per_sample, "T", cfg["centroid"]["n_bootstrap"], cfg["seed"])
    out = Path(out_dir)
    write_csv(summary, out / OUTPUTS["summary"])
    write_csv(per_condition, out / OUTPUTS["per_condition"])
    write_csv(per_sample, out / OUTPUTS["per_sample"])
    write_csv(ranking, out / OUTPUTS["ranking"])
    plot_centroid(per_sample, masks, summary, out / OUTPUTS["plot"])
    result = headline(summary, per_condition, ranking)
    result["generated_rows_dropped_nonfinite"] = generated.meta.attrs.get("dropped_nonfinite", 0)
    result["scored_samples_without_features"] = generated.meta.attrs.get("missing_features", 0)
    write_headline(result, out / OUTPUTS["headline"])
    return result
