"""KID and ΔKID in encoder space: per condition, for trust-selected vs random subsets, against mean trust,
and per trust decile.

KID(X, Y) = unbiased MMD² with the standard KID kernel k(x, y) = (x·y/d + 1)³ on the raw encoder features,
averaged over `n_subsets` draws of m samples from each set (without replacement, fixed seeds).
ΔKID(c) = KID(gen_c, realA_c) − KID(realB_c, realA_c), with realA_c, realB_c disjoint random halves of the
real samples of c: 0 = as close to real as real is to itself. m = min(n_gen, n_real/2, max_subset); the
same m is used for both terms. Conditions where m < 2 get no value; m < min_subset is flagged as noisy.
Never crashes on small conditions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..io import write_csv
from .common import ANALYSED_ARMS, Table, load_space, reference, save_figure, settings, write_headline
from .stats import (cubic_kernel, draw_subsets, encode, group_indices, matched_random_masks, mmd2_subsets, spearman,
                    trust_bins)

OUTPUTS = {
    "per_condition": "kid_per_condition.csv",
    "selection": "kid_selection.csv",
    "ranking": "kid_ranking.csv",
    "deciles": "kid_deciles.csv",
    "ranking_plot": "kid_ranking.png",
    "selection_plot": "kid_selection.png",
    "deciles_plot": "kid_deciles.png",
    "headline": "kid.json",
}


def delta_kid(K: np.ndarray, pool: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, max_subset: int,
              n_subsets: int, rng: np.random.Generator) -> dict:
    """ΔKID of the generated rows `pool` of one condition; all index arrays point into the Gram matrix K."""
    m = int(min(len(pool), len(half_a), len(half_b), max_subset))
    if m < 2:
        return {"m": m, "kid_generated": np.nan, "kid_real_halves": np.nan, "delta_kid": np.nan, "delta_kid_sd": np.nan}
    a = draw_subsets(half_a, m, n_subsets, rng)
    kid_generated = mmd2_subsets(K, draw_subsets(pool, m, n_subsets, rng), a)
    kid_real = mmd2_subsets(K, draw_subsets(half_b, m, n_subsets, rng), a)
    delta = kid_generated - kid_real
    return {"m": m, "kid_generated": kid_generated.mean(), "kid_real_halves": kid_real.mean(),
            "delta_kid": delta.mean(), "delta_kid_sd": delta.std(ddof=1) if n_subsets > 1 else np.nan}


def kid_analysis(reference: Table, generated: Table, max_subset: int = 500, n_subsets: int = 10,
                 min_subset: int = 20, n_bins: int = 10, n_seeds: int = 5, seed: int = 0) -> dict[str, pd.DataFrame]:
    """All KID tables: per condition, selection gain summary, Spearman ranking, ΔKID per trust decile."""
    names = np.unique(generated.conditions)
    codes = encode(generated.conditions, names)
    real_codes = encode(reference.conditions, names)
    gen_groups, real_groups = group_indices(codes, len(names)), group_indices(real_codes, len(names))
    accepted = generated.column("accepted").astype(bool)
    random_masks = matched_random_masks(codes, accepted, n_seeds, seed)
    bins = trust_bins(codes, generated.column("T"), n_bins)
    rows, decile_rows = [], []
    for code, name in enumerate(tqdm(names, desc="KID per condition", mininterval=5)):
        g, r = gen_groups[code], real_groups[code]
        halves = r[np.argsort(np.random.default_rng([seed, code, 0]).random(len(r)))]
        half_a, half_b = np.arange(len(halves) // 2), np.arange(len(halves) // 2, len(halves))
        # One Gram matrix per condition over [real halves, generated]; every subset below indexes into it.
        K = cubic_kernel(*(2 * [np.concatenate([reference.X[halves], generated.X[g]])]))
        local = len(halves) + np.arange(len(g))

        def rng(purpose):
            return np.random.default_rng([seed, code, purpose])

        full = delta_kid(K, local, half_a, half_b, max_subset, n_subsets, rng(1))
        selected = delta_kid(K, local[accepted[g]], half_a, half_b, max_subset, n_subsets, rng(2))
        random = [delta_kid(K, local[mask[g]], half_a, half_b, max_subset, n_subsets, rng(10 + s))
                  for s, mask in enumerate(random_masks)]
        flag = _flag(full["m"], min_subset, len(r))
        meta = generated.meta.iloc[g]
        rows.append({
            "condition": name, "arm": meta["Metadata_arm"].iloc[0], "n_generated": len(g), "n_real": len(r),
            "mean_T": meta["T"].mean(), "mean_R": meta["R"].mean(), "mean_F": meta["F"].mean(),
            **full,
            "n_accepted": int(accepted[g].sum()), "acceptance_rate": accepted[g].mean(),
            "m_selection": selected["m"], "delta_kid_accepted": selected["delta_kid"],
            "delta_kid_random": np.mean([x["delta_kid"] for x in random]) if selected["m"] >= 2 else np.nan,
            "flag": flag,
        })
        for decile in range(n_bins):
            value = delta_kid(K, local[bins[g] == decile], half_a, half_b, max_subset, n_subsets, rng(100 + decile))
            decile_rows.append({"condition": name, "arm": rows[-1]["arm"], "decile": decile + 1, **value})
    per_condition = pd.DataFrame(rows)
    return {"per_condition": per_condition, "selection": selection_gain(per_condition),
            "ranking": ranking(per_condition), "deciles": decile_summary(pd.DataFrame(decile_rows), min_subset)}


def _flag(m: int, min_subset: int, n_real: int) -> str:
    if m < 2:
        return f"too few samples for KID (m = {m}; {n_real} real samples)"
    if m < min_subset:
        return f"small condition: KID on m = {m} < {min_subset} samples per set, noisy"
    return ""


def _arms(table: pd.DataFrame):
    yield "all", table
    for arm in ANALYSED_ARMS:
        if (table["arm"] == arm).any():
            yield arm, table[table["arm"] == arm]


def selection_gain(per_condition: pd.DataFrame) -> pd.DataFrame:
    """ΔKID of trust-accepted samples vs condition-matched random subsets of equal size, per arm.
    relative_improvement = (ΔKID_random − ΔKID_accepted) / |ΔKID_random| (positive = trust selection better)."""
    rows = []
    for arm, table in _arms(per_condition):
        both = table.dropna(subset=["delta_kid_accepted", "delta_kid_random"])
        accepted_mean, random_mean = both["delta_kid_accepted"].mean(), both["delta_kid_random"].mean()
        rows.append({
            "arm": arm, "n_conditions": len(both), "n_conditions_without_selection": len(table) - len(both),
            "acceptance_rate": table["n_accepted"].sum() / table["n_generated"].sum(),
            "delta_kid_accepted": accepted_mean, "delta_kid_random": random_mean,
            "gain": random_mean - accepted_mean,
            "relative_improvement": (random_mean - accepted_mean) / abs(random_mean)
            if len(both) and random_mean != 0 else np.nan,
            "fraction_conditions_improved": (both["delta_kid_accepted"] < both["delta_kid_random"]).mean()
            if len(both) else np.nan,
        })
    return pd.DataFrame(rows)


def ranking(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ over conditions between mean T (and R, F) and ΔKID; positive = worse-trusted conditions are
    further from real, i.e. the trust score ranks conditions correctly."""
    rows = []
    for arm, table in _arms(per_condition):
        for score in ("T", "R", "F"):
            rho, p, n = spearman(table[f"mean_{score}"], table["delta_kid"])
            rows.append({"arm": arm, "score": score, "spearman_rho": rho, "p_value": p, "n_conditions": n})
    return pd.DataFrame(rows)


def decile_summary(per_decile: pd.DataFrame, min_subset: int) -> pd.DataFrame:
    """Mean ΔKID per trust decile over conditions (each condition's decile scored against its own real)."""
    rows = []
    for arm, table in _arms(per_decile):
        for decile, part in table.groupby("decile"):
            valid = part.dropna(subset=["delta_kid"])
            median_m = float(valid["m"].median()) if len(valid) else 0.0
            rows.append({
                "arm": arm, "decile": int(decile), "n_conditions": len(valid),
                "delta_kid_mean": valid["delta_kid"].mean(),
                "delta_kid_sem": valid["delta_kid"].std(ddof=1) / np.sqrt(len(valid)) if len(valid) > 1 else np.nan,
                "median_m": median_m,
                "flag": "" if median_m >= min_subset else f"median subset size {median_m:g} < {min_subset}: noisy",
            })
    return pd.DataFrame(rows)


def plot_ranking(per_condition: pd.DataFrame, ranks: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    labels = {"T": "mean trust score T", "R": "mean realism term R", "F": "mean faithfulness term F"}
    for ax, score in zip(axes, ("T", "R", "F")):
        for arm, colour in zip(ANALYSED_ARMS, ("tab:blue", "tab:orange")):
            rows = per_condition[per_condition["arm"] == arm]
            ax.scatter(rows[f"mean_{score}"], rows["delta_kid"], s=16, color=colour, label=f"{arm} condition")
        rho = ranks[(ranks["arm"] == "all") & (ranks["score"] == score)]["spearman_rho"]
        ax.set_title(f"{labels[score]}: Spearman ρ = {rho.iloc[0]:.2f}" if len(rho) else labels[score], fontsize=10)
        ax.set_xlabel(f"{labels[score]} per condition (higher = less trusted)")
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
    axes[0].set_ylabel("ΔKID (generated vs real, minus real vs real)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Does the trust score rank conditions by how far their generated cells are from real cells?")
    save_figure(fig, path)


def plot_selection(per_condition: pd.DataFrame, selection: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    both = per_condition.dropna(subset=["delta_kid_accepted", "delta_kid_random"])
    for arm, colour in zip(ANALYSED_ARMS, ("tab:blue", "tab:orange")):
        rows = both[both["arm"] == arm]
        ax.scatter(rows["delta_kid_random"], rows["delta_kid_accepted"], s=16, color=colour, label=f"{arm} condition")
    if len(both):
        low = min(both["delta_kid_random"].min(), both["delta_kid_accepted"].min())
        high = max(both["delta_kid_random"].max(), both["delta_kid_accepted"].max())
        ax.plot([low, high], [low, high], color="black", linestyle="--", linewidth=0.8)
    overall = selection[selection["arm"] == "all"]
    gain = overall["relative_improvement"].iloc[0] if len(overall) else np.nan
    ax.set_xlabel("ΔKID of a random subset of the same size")
    ax.set_ylabel("ΔKID of trust-accepted samples")
    ax.set_title(f"Trust selection vs random selection, per condition\n(below the diagonal = trust helps; "
                 f"relative improvement {gain:.0%})" if np.isfinite(gain) else "Trust selection vs random selection")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_deciles(deciles: pd.DataFrame, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm, colour in zip(("all", *ANALYSED_ARMS), ("black", "tab:blue", "tab:orange")):
        rows = deciles[deciles["arm"] == arm].sort_values("decile")
        if len(rows):
            ax.errorbar(rows["decile"], rows["delta_kid_mean"], yerr=rows["delta_kid_sem"].fillna(0), fmt="o-",
                        color=colour, capsize=3, label=f"{arm} conditions")
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8, label="as close as real to real")
    ax.set_xlabel("trust decile within condition (1 = most trusted)")
    ax.set_ylabel("mean ΔKID over conditions (± SEM)")
    ax.set_title("Distance from real cells by trust decile")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def headline(tables: dict) -> dict:
    per_condition, selection, ranks, deciles = (tables[k] for k in ("per_condition", "selection", "ranking", "deciles"))
    out = {"n_conditions": len(per_condition), "n_flagged_conditions": int((per_condition["flag"] != "").sum())}
    for arm, table in _arms(per_condition):
        out[f"mean_delta_kid_{arm}"] = table["delta_kid"].mean()
    for row in selection.itertuples():
        out[f"selection_{row.arm}"] = {"delta_kid_accepted": row.delta_kid_accepted,
                                       "delta_kid_random": row.delta_kid_random,
                                       "relative_improvement": row.relative_improvement,
                                       "acceptance_rate": row.acceptance_rate}
    for row in ranks[ranks["arm"] == "all"].itertuples():
        out[f"spearman_mean_{row.score}_vs_delta_kid"] = row.spearman_rho
    overall = deciles[deciles["arm"] == "all"].sort_values("decile")
    out["delta_kid_by_decile"] = overall["delta_kid_mean"].tolist()
    return out


def run(real_paths, generated_path, trust_path, out_dir, cfg: dict | None = None) -> dict:
    cfg = settings(cfg)
    real, generated = load_space("encoder", real_paths, generated_path, trust_path)
    kid = cfg["kid"]
    tables = kid_analysis(reference(real, cfg["reference_splits"]), generated, kid["max_subset"], kid["n_subsets"],
                          kid["min_subset"], cfg["deciles"]["n_bins"], cfg["n_random_seeds"], cfg["seed"])
    out = Path(out_dir)
    for key in ("per_condition", "selection", "ranking", "deciles"):
        write_csv(tables[key], out / OUTPUTS[key])
    plot_ranking(tables["per_condition"], tables["ranking"], out / OUTPUTS["ranking_plot"])
    plot_selection(tables["per_condition"], tables["selection"], out / OUTPUTS["selection_plot"])
    plot_deciles(tables["deciles"], out / OUTPUTS["deciles_plot"])
    result = headline(tables)
    write_headline(result, out / OUTPUTS["headline"])
    return result
