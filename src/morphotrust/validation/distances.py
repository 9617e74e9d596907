"""Beyond the paper: per-condition two-sample distances and the discrimination test, in one feature space.

- Energy distance (squared, unbiased U-statistic form: 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖, ≈ 0 for two samples of
  one distribution) and MMD² (unbiased, Gaussian kernel with one bandwidth per space: the median distance
  between reference real samples) between the generated and the real samples of each condition.
- Discrimination: for each condition's generated set, every real condition is ranked by its energy distance
  to the set (and, as a simpler second view, by the distance between the set means); the rank of the true
  condition (1 = nearest) and the fraction of conditions ranked first are reported. A generator that paints
  the "average treated cell" ranks its true condition at chance: top-1 ≈ 1 / number of conditions.
- Retrieval mean average precision (the field's replicate-retrieval metric, computed by the `copairs`
  package, cosine similarity): each generated sample queries all real samples; the real samples of its own
  condition are the positives, those of every other condition the negatives. Per condition: mAP over its
  generated samples and copairs' permutation p-value (FDR-corrected over conditions). Trust-accepted samples
  vs condition-matched random subsets of the same per-condition sizes: Δ = mean AP of accepted − of random
  (seeds pooled), 95% bootstrap interval. Chance: a query's AP under a random ranking is about its share of
  positives among the real samples (n_pos / n_total), reported as chance_map.
Sets are capped at `max_per_set` random samples per condition to bound the cost (not for the mAP).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..io import write_csv
from .common import ANALYSED_ARMS, SPACE_NAMES, Table, load_space, reference, save_figure, settings, write_headline
from .stats import (bootstrap_mean_difference, distances, encode, group_indices, matched_random_masks,
                    mean_off_diagonal, median_bandwidth, rbf_mmd2, spearman)

PER_CONDITION_COLUMNS = ["condition", "arm", "n_generated_used", "n_real_used", "mean_T", "acceptance_rate",
                         "energy_distance", "mmd2_rbf", "centroid_distance", "flag"]
RANK_COLUMNS = ["condition", "arm", "n_candidates", "rank_energy", "nearest_energy", "rank_centroid",
                "nearest_centroid", "flag"]


def outputs(space: str) -> dict:
    return {"per_condition": f"distances_{space}.csv", "per_condition_plot": f"distances_{space}.png",
            "discrimination": f"discrimination_{space}.csv", "discrimination_plot": f"discrimination_{space}.png",
            "map": f"map_{space}.csv", "map_per_sample": f"map_per_sample_{space}.csv",
            "headline": f"distances_{space}.json"}


def cap_groups(groups: list[np.ndarray], max_per_set: int, seed: int, salt: int) -> list[np.ndarray]:
    """At most `max_per_set` random members of each group (seeded per group), kept in ascending order."""
    capped = []
    for code, rows in enumerate(groups):
        if len(rows) > max_per_set:
            rows = np.sort(np.random.default_rng([seed, salt, code]).choice(rows, max_per_set, replace=False))
        capped.append(rows)
    return capped


def cross_mean_distances(X: np.ndarray, Y: np.ndarray, y_groups: list[np.ndarray],
                         max_cells: int = 4_000_000) -> np.ndarray:
    """Mean ‖x − y‖ over all x in X and y in each group of Y: a vector with one value per group
    (NaN for an empty group). X is processed in row chunks so the distance block stays below max_cells."""
    order = np.concatenate(y_groups) if y_groups else np.array([], int)
    counts = np.array([len(g) for g in y_groups])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    Y_sorted = Y[order]
    column_sums = np.zeros(len(order))
    step = max(1, max_cells // max(len(order), 1))
    for start in range(0, len(X), step):
        column_sums += distances(X[start:start + step], Y_sorted).sum(axis=0)
    nonempty = counts > 0
    sums = np.full(len(y_groups), np.nan)
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(column_sums, starts[nonempty])
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / (counts * len(X))


def condition_distances(reference: Table, generated: Table, max_per_set: int = 500,
                        seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Per generated condition: energy distance and MMD² to its real samples, and the discrimination ranks
    among all real conditions. Returns (per-condition table, discrimination table, energy matrix
    [generated condition × real condition])."""
    gen_names = np.unique(generated.conditions)
    real_names = np.unique(reference.conditions)
    gen_groups = group_indices(encode(generated.conditions, gen_names), len(gen_names))
    real_groups = group_indices(encode(reference.conditions, real_names), len(real_names))
    gen_groups = cap_groups(gen_groups, max_per_set, seed, 1)
    real_groups = cap_groups(real_groups, max_per_set, seed, 2)
    within_real = np.array([mean_off_diagonal(distances(reference.X[r], reference.X[r])) for r in real_groups])
    real_means = np.array([reference.X[r].mean(axis=0) for r in real_groups])
    bandwidth = median_bandwidth(reference.X, np.random.default_rng([seed, 3]))
    true_index = encode(gen_names, real_names)
    energy = np.full((len(gen_names), len(real_names)), np.nan)
    centroid = np.full_like(energy, np.nan)
    rows, ranks = [], []
    for code, name in enumerate(tqdm(gen_names, desc="distances per condition", mininterval=5)):
        g = gen_groups[code]
        Xg = generated.X[g]
        within_gen = mean_off_diagonal(distances(Xg, Xg))
        # Within-generated spread is the same for every candidate: the ranking does not depend on it, so a
        # single generated sample can still be ranked.
        energy[code] = 2.0 * cross_mean_distances(Xg, reference.X, real_groups) - within_real - \
            (within_gen if np.isfinite(within_gen) else 0.0)
        centroid[code] = np.linalg.norm(real_means - Xg.mean(axis=0), axis=1)
        t = true_index[code]
        meta = generated.meta.iloc[g]
        flag = ""
        if t < 0:
            flag = "no real samples of this condition"
        elif len(real_groups[t]) < 2 or len(g) < 2:
            flag = f"too few samples for set distances ({len(g)} generated, {len(real_groups[t])} real)"
        rows.append({
            "condition": name, "arm": meta["Metadata_arm"].iloc[0],
            "n_generated_used": len(g), "n_real_used": len(real_groups[t]) if t >= 0 else 0,
            "mean_T": meta["T"].mean(), "acceptance_rate": meta["accepted"].mean(),
            "energy_distance": energy[code, t] if t >= 0 and not flag else np.nan,
            "mmd2_rbf": rbf_mmd2(Xg, reference.X[real_groups[t]], bandwidth) if t >= 0 and not flag else np.nan,
            "centroid_distance": centroid[code, t] if t >= 0 else np.nan,
            "flag": flag,
        })
        ranks.append({"condition": name, "arm": rows[-1]["arm"], **_ranks(energy[code], centroid[code], t, real_names),
                      "flag": "no real samples of this condition: cannot be ranked" if t < 0 else ""})
    # explicit columns: no rows when CellProfiler measured no generated image (all dropped by the cleaning)
    per_condition = pd.DataFrame(rows, columns=PER_CONDITION_COLUMNS)
    per_condition.attrs["rbf_bandwidth"] = bandwidth
    return per_condition, pd.DataFrame(ranks, columns=RANK_COLUMNS), energy


def _ranks(energy: np.ndarray, centroid: np.ndarray, true: int, real_names: np.ndarray) -> dict:
    """Rank (1 = nearest) of the true real condition among the candidates with a defined distance."""
    out = {"n_candidates": int(np.isfinite(energy).sum())}
    for label, values in (("energy", energy), ("centroid", centroid)):
        candidates = np.isfinite(values)
        nearest = int(np.nanargmin(values)) if candidates.any() else -1
        defined = true >= 0 and np.isfinite(values[true])
        out[f"rank_{label}"] = int(1 + (values[candidates] < values[true]).sum()) if defined else np.nan
        out[f"nearest_{label}"] = real_names[nearest] if nearest >= 0 else ""
    return out


def retrieval_average_precision(reference: Table, generated: Table) -> pd.DataFrame:
    """copairs average precision of each generated sample retrieving the real samples of its condition among all
    real samples (cosine similarity). One row per generated sample, in order: average_precision (NaN when its
    condition has no real sample), copairs' normalized_average_precision, n_pos_pairs, n_total_pairs."""
    from copairs.map import average_precision
    from copairs.matching import UnpairedException

    meta = pd.DataFrame({
        "Metadata_condition": np.concatenate([generated.conditions, reference.conditions]),
        "Metadata_source": ["generated"] * len(generated) + ["real"] * len(reference),
        "row": np.concatenate([np.arange(len(generated)), np.arange(len(reference))]),
    })
    empty = pd.DataFrame({"average_precision": np.full(len(generated), np.nan),
                          "normalized_average_precision": np.full(len(generated), np.nan),
                          "n_pos_pairs": np.zeros(len(generated), int), "n_total_pairs": np.zeros(len(generated), int)})
    if not len(generated) or not len(reference):
        return empty
    try:
        # positives: generated-real pairs of one condition; negatives: generated-real pairs of two conditions
        scores = average_precision(meta, np.vstack([generated.X, reference.X]),
                                   pos_sameby=["Metadata_condition"], pos_diffby=["Metadata_source"],
                                   neg_sameby=[], neg_diffby=["Metadata_condition", "Metadata_source"],
                                   progress_bar=False)
    except UnpairedException:  # no generated condition has real samples, or only one condition
        return empty
    scores = scores[scores["Metadata_source"] == "generated"].sort_values("row")
    return pd.DataFrame({"average_precision": scores["average_precision"].to_numpy(float),
                         "normalized_average_precision": scores["normalized_average_precision"].to_numpy(float),
                         "n_pos_pairs": scores["n_pos_pairs"].to_numpy(int),
                         "n_total_pairs": scores["n_total_pairs"].to_numpy(int)})


def retrieval_map(reference: Table, generated: Table, n_seeds: int = 5, n_bootstrap: int = 2000,
                  null_size: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per-sample AP, per-condition mAP with copairs p-values, and the headline (all / seen / unseen:
    mAP of all, trust-accepted and condition-matched random generated samples)."""
    from copairs.map import mean_average_precision

    ap = retrieval_average_precision(reference, generated)
    per_sample = pd.DataFrame({
        "sample_id": generated.column("Metadata_sample_id"), "condition": generated.conditions,
        "arm": generated.column("Metadata_arm"), "T": generated.column("T"),
        "accepted": generated.column("accepted").astype(bool), **{c: ap[c].to_numpy() for c in ap.columns}})
    valid = np.isfinite(per_sample["average_precision"].to_numpy())
    if valid.any():
        per_condition = mean_average_precision(per_sample[valid].rename(columns={"condition": "Metadata_condition"}),
                                               ["Metadata_condition"], null_size=null_size, threshold=0.05,
                                               seed=seed, progress_bar=False)
        per_condition = per_condition.rename(columns={"Metadata_condition": "condition"}).drop(columns="indices")
    else:
        per_condition = pd.DataFrame(columns=["condition", "mean_average_precision", "p_value", "corrected_p_value",
                                              "below_corrected_p"])
    arms = per_sample.drop_duplicates("condition").set_index("condition")["arm"]
    per_condition.insert(1, "arm", per_condition["condition"].map(arms))
    names = np.unique(per_sample["condition"].to_numpy().astype(str))
    codes = encode(per_sample["condition"], names)
    accepted = per_sample["accepted"].to_numpy() & valid
    masks = np.zeros((n_seeds, len(per_sample)), dtype=bool)
    if valid.any():
        masks[:, valid] = matched_random_masks(codes[valid], accepted[valid], n_seeds, seed)
    values = per_sample["average_precision"].to_numpy()
    chance = (per_sample["n_pos_pairs"] / per_sample["n_total_pairs"].where(per_sample["n_total_pairs"] > 0)).to_numpy()
    arm = per_sample["arm"].to_numpy().astype(str)
    rng = np.random.default_rng([seed, 4000])
    out = {}
    for arm_name in ("all", *ANALYSED_ARMS):
        in_arm = np.ones(len(arm), bool) if arm_name == "all" else arm == arm_name
        if not (in_arm & valid).any():
            continue
        chosen = accepted & in_arm
        random_rows = np.concatenate([np.flatnonzero(m & in_arm) for m in masks])
        delta, low, high = bootstrap_mean_difference(values[chosen], values[random_rows], n_bootstrap, rng)
        conditions = per_condition if arm_name == "all" else per_condition[per_condition["arm"] == arm_name]
        out[arm_name] = {
            "map_all": float(values[in_arm & valid].mean()),
            "map_accepted": float(values[chosen].mean()) if chosen.any() else np.nan,
            "map_random": float(values[random_rows].mean()) if len(random_rows) else np.nan,
            "delta_map": delta, "delta_map_ci": [low, high],
            "chance_map": float(np.nanmean(chance[in_arm & valid])),
            "n_accepted": int(chosen.sum()), "n_queries": int((in_arm & valid).sum()),
            "fraction_conditions_retrieved": float(conditions["below_corrected_p"].astype(bool).mean())
            if len(conditions) else np.nan,
        }
    out["n_queries_without_real"] = int((~valid).sum())
    return per_sample, per_condition, out


def plot_per_condition(per_condition: pd.DataFrame, space: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = per_condition.sort_values("energy_distance").reset_index(drop=True)
    colours = np.where(rows["arm"] == "unseen", "tab:orange", "tab:blue")
    for ax, column, label in ((axes[0], "energy_distance", "energy distance (squared)"),
                              (axes[1], "mmd2_rbf", "MMD² (Gaussian kernel)")):
        ax.bar(np.arange(len(rows)), rows[column].fillna(0), color=colours, width=0.9)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("condition (sorted by energy distance)")
        ax.set_ylabel(f"{label}, generated vs real")
        ax.set_title(f"{label}\nper condition (0 = like a second sample of real cells)", fontsize=10)
        if len(rows) <= 40:
            ax.set_xticks(np.arange(len(rows)), rows["condition"], rotation=90, fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange")]
    axes[0].legend(handles, ["seen condition", "unseen condition"], fontsize=8)
    fig.suptitle(f"How far each condition's generated cells are from its real cells ({SPACE_NAMES[space]})")
    save_figure(fig, path)


def plot_discrimination(ranks: pd.DataFrame, energy: np.ndarray, gen_names, real_names, space: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    # Row-wise ranks make rows comparable: dark = nearest real condition for that generated set.
    row_ranks = np.argsort(np.argsort(np.where(np.isfinite(energy), energy, np.inf), axis=1), axis=1) + 1.0
    image = left.imshow(row_ranks, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=left, label="rank of real condition (1 = nearest)")
    if len(real_names) <= 40:
        left.set_xticks(np.arange(len(real_names)), real_names, rotation=90, fontsize=6)
        left.set_yticks(np.arange(len(gen_names)), gen_names, fontsize=6)
    left.set_xlabel("real condition")
    left.set_ylabel("generated condition")
    left.set_title("Which real condition does each generated set resemble?\n(energy distance; ideal: dark diagonal)",
                   fontsize=10)
    finite = ranks.dropna(subset=["rank_energy"])
    n_candidates = int(ranks["n_candidates"].max()) if len(ranks) else 1
    bins = np.arange(0.5, max(n_candidates, 1) + 1.5)
    for arm, colour in zip(ANALYSED_ARMS, ("tab:blue", "tab:orange")):
        values = finite.loc[finite["arm"] == arm, "rank_energy"]
        if len(values):
            right.hist(values, bins=bins, color=colour, alpha=0.6, label=f"{arm} conditions")
    if len(finite):
        right.axhline(len(finite) / max(n_candidates, 1), color="grey", linestyle="--", label="chance (uniform rank)")
    right.set_xlabel("rank of the true condition among all real conditions (1 = correct)")
    right.set_ylabel("number of generated conditions")
    top1 = (finite["rank_energy"] == 1).mean() if len(finite) else np.nan
    right.set_title(f"Discrimination: true condition ranked first for {top1:.0%} of conditions"
                    if np.isfinite(top1) else "Discrimination", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle(f"Discrimination test ({SPACE_NAMES[space]})")
    save_figure(fig, path)


def headline(per_condition: pd.DataFrame, ranks: pd.DataFrame) -> dict:
    out = {"n_conditions": len(per_condition), "n_flagged_conditions": int((per_condition["flag"] != "").sum()),
           "rbf_bandwidth": per_condition.attrs.get("rbf_bandwidth")}
    for arm in ("all", *ANALYSED_ARMS):
        part = ranks if arm == "all" else ranks[ranks["arm"] == arm]
        dist = per_condition if arm == "all" else per_condition[per_condition["arm"] == arm]
        ranked = part.dropna(subset=["rank_energy"])
        if not len(ranked):
            continue
        out[arm] = {
            "top1_fraction_energy": float((ranked["rank_energy"] == 1).mean()),
            "top1_fraction_centroid": float((ranked["rank_centroid"] == 1).mean()),
            "mean_rank_energy": ranked["rank_energy"].mean(),
            "chance_top1": float((1.0 / ranked["n_candidates"]).mean()),
            "chance_mean_rank": float(((ranked["n_candidates"] + 1) / 2).mean()),
            "mean_energy_distance": dist["energy_distance"].mean(), "mean_mmd2_rbf": dist["mmd2_rbf"].mean(),
        }
    rho, _, _ = spearman(per_condition["mean_T"], per_condition["energy_distance"])
    out["spearman_mean_T_vs_energy_distance"] = rho
    return out


def run(space: str, real_paths, generated_path, trust_path, out_dir, cfg: dict | None = None) -> dict:
    cfg = settings(cfg)
    real, generated = load_space(space, real_paths, generated_path, trust_path)
    per_condition, ranks, energy = condition_distances(reference(real, cfg["reference_splits"]), generated,
                                                       cfg["distances"]["max_per_set"], cfg["seed"])
    out, names = Path(out_dir), outputs(space)
    write_csv(per_condition.assign(space=space), out / names["per_condition"])
    write_csv(ranks.assign(space=space), out / names["discrimination"])
    plot_per_condition(per_condition, space, out / names["per_condition_plot"])
    plot_discrimination(ranks, energy, np.unique(generated.conditions),
                        np.unique(reference(real, cfg["reference_splits"]).conditions), space,
                        out / names["discrimination_plot"])
    map_per_sample, map_per_condition, map_headline = retrieval_map(
        reference(real, cfg["reference_splits"]), generated, cfg["n_random_seeds"], cfg["distances"]["n_bootstrap"],
        cfg["distances"]["map_null_size"], cfg["seed"])
    write_csv(map_per_condition.assign(space=space), out / names["map"])
    write_csv(map_per_sample.assign(space=space), out / names["map_per_sample"])
    result = headline(per_condition, ranks)
    result["map"] = map_headline
    write_headline(result, out / names["headline"])
    return result
