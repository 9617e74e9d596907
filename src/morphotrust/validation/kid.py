"""KID and ΔKID in encoder space: per condition, for trust-selected vs random subsets, against mean trust,
and per trust decile.

KID(X, Y) = unbiased MMD² with the standard KID kernel k(x, y) = (x·y/d + 1)³ on the raw encoder features,
averaged over `n_subsets` draws of m samples from each set (without replacement, fixed seeds).
ΔKID(c) = KID(gen_c, realA_c) − KID(realB_c, realA_c), with realA_c, realB_c disjoint random halves of the
real samples of c: 0 = as close to real as real is to itself. m = min(n_gen, n_real/2, max_subset); the
same m is used for both terms. Conditions where m < 2 get no value; m < min_subset is flagged as noisy.
Never crashes on small conditions.

Pooled selection gain (`PooledKID`, `pooled_selection`): a condition rarely holds enough accepted samples for a
stable KID (2-3 on the demo: m = 2), so the headline gain pools each arm's conditions. For a selection X whose
samples fall into the conditions with shares w_c, the real reference is the mixture A_w = Σ_c w_c A_c of the
same disjoint halves (and B_w likewise), so the selection and its reference hold the conditions in the same
proportions: ΔKID_pooled(X) = KID(X, A_w) − KID(B_w, A_w) = [E k(X, X') − E k(B, B')] − 2 [E k(X, A) −
E k(B, A)] (the E k(A, A') terms cancel). Every term is an exact kernel mean from per-condition means, using every
real sample: E k(X, X') over distinct pairs of X, and E k(B, B') with the condition pairs weighed as X's distinct
pairs fall (a condition's own pairs within a half over distinct pairs), so real-like samples have expected
ΔKID_pooled 0 at any per-condition counts. Trust-accepted and condition-matched random selections have the same
counts, so their difference compares like with like. Its 95% interval is a condition-stratified bootstrap: replicates resample, within each condition, the
accepted samples and each random selection (with replacement; within-set terms over pairs of distinct originals),
the real reference held fixed; a selection larger than `max_subset` is resampled to that size (same shares).
"""

from __future__ import annotations

from dataclasses import dataclass
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


def real_halves(rows: np.ndarray, code: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random halves (A, B) of one condition's real rows (A the smaller when the count is odd)."""
    shuffled = rows[np.argsort(np.random.default_rng([seed, code, 0]).random(len(rows)))]
    return shuffled[:len(rows) // 2], shuffled[len(rows) // 2:]


@dataclass
class PooledKID:
    """Kernel means giving the pooled ΔKID of any multiset of generated rows (module docstring).

    codes: condition code of each generated row (−1 where the condition has fewer than 3 real samples: no
    reference); gram: K among generated rows; to_a: (n, C) mean K(x, a) over a in A_c; bb: (C, C) mean K between
    the B halves of two conditions (within a condition: over distinct pairs); ab: (C, C) mean K(A_c, B_c')."""

    codes: np.ndarray
    gram: np.ndarray
    to_a: np.ndarray
    bb: np.ndarray
    ab: np.ndarray

    @classmethod
    def build(cls, reference: Table, generated: Table, seed: int = 0, chunk: int = 4096) -> "PooledKID":
        names = np.unique(generated.conditions)
        if not len(names):
            return cls(np.empty(0, int), *(np.empty((0, 0)) for _ in range(4)))
        codes = encode(generated.conditions, names)
        real_groups = group_indices(encode(reference.conditions, names), len(names))
        halves = [real_halves(rows, code, seed) for code, rows in enumerate(real_groups)]
        usable = np.array([len(a) >= 1 and len(b) >= 2 for a, b in halves], dtype=bool)
        codes = np.where((codes >= 0) & usable[np.maximum(codes, 0)], codes, -1)
        a_rows = np.concatenate([a for a, _ in halves] + [np.empty(0, int)]).astype(int)
        b_rows = np.concatenate([b for _, b in halves] + [np.empty(0, int)]).astype(int)
        a_codes = np.repeat(np.arange(len(names)), [len(a) for a, _ in halves])
        b_codes = np.repeat(np.arange(len(names)), [len(b) for _, b in halves])
        a_sizes, b_sizes = np.bincount(a_codes, minlength=len(names)), np.bincount(b_codes, minlength=len(names))
        H_a = _indicator(a_codes, len(names)) / np.maximum(a_sizes, 1)
        H_b = _indicator(b_codes, len(names)) / np.maximum(b_sizes, 1)
        to_a = np.concatenate([cubic_kernel(generated.X[start:start + chunk], reference.X[a_rows]) @ H_a
                               for start in range(0, len(generated), chunk)] + [np.empty((0, len(names)))])
        K_bb = cubic_kernel(reference.X[b_rows], reference.X[b_rows])
        bb = H_b.T @ K_bb @ H_b
        within = _indicator(b_codes, len(names)).T @ np.diag(K_bb)  # Σ K(b, b) per condition
        with np.errstate(invalid="ignore", divide="ignore"):  # within a condition: distinct pairs only
            np.fill_diagonal(bb, (np.diag(bb) * b_sizes ** 2 - within) / (b_sizes * (b_sizes - 1)))
        ab = H_a.T @ cubic_kernel(reference.X[a_rows], reference.X[b_rows]) @ H_b
        return cls(codes, cubic_kernel(generated.X, generated.X), to_a, np.nan_to_num(bb), ab)

    def delta_kid(self, rows: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """ΔKID_pooled of the multisets `counts` (reps, m) over the generated `rows` (m,) with a reference
        (counts None: each row once). The within-set mean runs over pairs of distinct rows; its real counterpart
        weighs the condition pairs exactly as those pairs fall (so a selection of real-like samples has expected
        ΔKID 0 at any per-condition counts). NaN below 2 distinct rows."""
        rows = np.asarray(rows, dtype=int)
        counts = np.ones((1, len(rows))) if counts is None else np.asarray(counts, dtype=float)
        membership = _indicator(self.codes[rows], self.to_a.shape[1])
        total = counts.sum(axis=1)
        per_condition = counts @ membership  # (reps, C)
        weights = per_condition / total[:, None]
        gram = self.gram[np.ix_(rows, rows)]
        same = (counts ** 2) @ membership  # Σ count² per condition: pairs of a row with itself
        pairs = total ** 2 - same.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            e_xx = (((counts @ gram) * counts).sum(axis=1) - (counts ** 2) @ np.diag(gram)) / pairs
            e_bb = (np.einsum("rc,cd,rd->r", per_condition, self.bb, per_condition)
                    - (same * np.diag(self.bb)).sum(axis=1)) / pairs
        e_xa = ((counts @ self.to_a[rows]) * weights).sum(axis=1) / total
        e_ba = np.einsum("rc,cd,rd->r", weights, self.ab, weights)
        return np.where(pairs > 0, (e_xx - e_bb) - 2.0 * (e_xa - e_ba), np.nan)


def _indicator(codes: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((len(codes), n_groups))
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _stratified_counts(codes: np.ndarray, reps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, m) bootstrap counts over m rows: within each code group, draws with replacement of the group's
    size scaled to `size` in all (at least one per group)."""
    m = len(codes)
    scale = min(1.0, size / m)
    order = np.argsort(codes, kind="stable")
    group_sizes = np.bincount(codes)[np.unique(codes)]
    starts = np.cumsum(group_sizes) - group_sizes
    draws = np.maximum(1, np.rint(group_sizes * scale).astype(int))
    start_of_draw = np.repeat(starts, draws)
    size_of_draw = np.repeat(group_sizes, draws)
    picks = order[start_of_draw + (rng.random((reps, len(start_of_draw))) * size_of_draw).astype(int)]
    counts = np.zeros((reps, m))
    np.add.at(counts, (np.repeat(np.arange(reps), picks.shape[1]), picks.ravel()), 1.0)
    return counts


def pooled_gain(pooled: PooledKID, selected: np.ndarray, random_masks: np.ndarray, n_bootstrap: int,
                max_subset: int, rng: np.random.Generator, level: float = 0.95, chunk: int = 100) -> dict:
    """Pooled ΔKID of the `selected` rows and of each condition-matched random mask (seeds averaged), the gain
    (random − selected), relative improvement (gain / |random|, positive = selection better) and their
    condition-stratified bootstrap intervals (module docstring)."""
    valid = pooled.codes >= 0
    chosen = np.flatnonzero(np.asarray(selected, bool) & valid)
    randoms = [np.flatnonzero(np.asarray(mask, bool) & valid) for mask in random_masks]
    out = {"n_selected": int(len(chosen)), "n_conditions": int(len(np.unique(pooled.codes[chosen]))),
           "delta_kid_selected": np.nan, "delta_kid_random": np.nan, "gain": np.nan, "relative_improvement": np.nan,
           "gain_ci_low": np.nan, "gain_ci_high": np.nan, "relative_ci_low": np.nan, "relative_ci_high": np.nan}
    if len(chosen) < 2 or not randoms or any(len(r) < 2 for r in randoms):
        return out
    accepted = float(pooled.delta_kid(chosen)[0])
    random = float(np.mean([pooled.delta_kid(r)[0] for r in randoms]))
    out.update(delta_kid_selected=accepted, delta_kid_random=random, gain=random - accepted,
               relative_improvement=(random - accepted) / abs(random) if random != 0 else np.nan)
    gains, relatives = [], []
    for start in range(0, n_bootstrap, chunk):
        reps = min(chunk, n_bootstrap - start)
        boot_accepted = pooled.delta_kid(chosen, _stratified_counts(pooled.codes[chosen], reps, max_subset, rng))
        boot_random = np.mean([pooled.delta_kid(r, _stratified_counts(pooled.codes[r], reps, max_subset, rng))
                               for r in randoms], axis=0)
        gains.append(boot_random - boot_accepted)
        with np.errstate(invalid="ignore", divide="ignore"):
            relatives.append((boot_random - boot_accepted) / np.abs(boot_random))
    tail = (1.0 - level) / 2.0 * 100.0
    for name, values in (("gain", np.concatenate(gains)), ("relative", np.concatenate(relatives))):
        values = values[np.isfinite(values)]
        if len(values):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = np.percentile(values, [tail, 100.0 - tail])
    return out


POOLED_COLUMNS = {"n_selected": "pooled_n_accepted", "n_conditions": "pooled_n_conditions",
                  "delta_kid_selected": "pooled_delta_kid_accepted", "delta_kid_random": "pooled_delta_kid_random",
                  "gain": "pooled_gain", "gain_ci_low": "pooled_gain_ci_low", "gain_ci_high": "pooled_gain_ci_high",
                  "relative_improvement": "pooled_relative_improvement", "relative_ci_low": "pooled_relative_ci_low",
                  "relative_ci_high": "pooled_relative_ci_high"}


def pooled_selection(pooled: PooledKID, arms: np.ndarray, accepted: np.ndarray, n_seeds: int, n_bootstrap: int,
                     max_subset: int, seed: int) -> pd.DataFrame:
    """Per arm (all, seen, unseen): the pooled ΔKID selection gain of `accepted` vs condition-matched random
    subsets (`n_seeds`), with its bootstrap interval; columns POOLED_COLUMNS' values. The same arguments give the
    same numbers, whichever score made `accepted` (the scorer comparison calls this for every score)."""
    accepted = np.asarray(accepted, dtype=bool)
    matchable = pooled.codes >= 0
    masks = np.zeros((n_seeds, len(accepted)), dtype=bool)
    if matchable.any():
        masks[:, matchable] = matched_random_masks(pooled.codes[matchable], accepted[matchable], n_seeds, seed)
    rows = []
    for index, arm in enumerate(("all", *ANALYSED_ARMS)):
        in_arm = np.ones(len(arms), bool) if arm == "all" else np.asarray(arms) == arm
        if not in_arm.any():
            continue
        result = pooled_gain(pooled, accepted & in_arm, masks & in_arm, n_bootstrap, max_subset,
                             np.random.default_rng([seed, 3000, index]))
        rows.append({"arm": arm, **{POOLED_COLUMNS[k]: v for k, v in result.items()}})
    return pd.DataFrame(rows, columns=["arm", *POOLED_COLUMNS.values()])


def kid_analysis(reference: Table, generated: Table, max_subset: int = 500, n_subsets: int = 10,
                 min_subset: int = 20, n_bins: int = 10, n_seeds: int = 5, seed: int = 0,
                 n_bootstrap: int = 500) -> dict[str, pd.DataFrame]:
    """All KID tables: per condition, selection gain summary (per condition and pooled over conditions, with
    its bootstrap interval), Spearman ranking, ΔKID per trust decile."""
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
        halves = np.concatenate(real_halves(r, code, seed))
        half_a, half_b = np.arange(len(r) // 2), np.arange(len(r) // 2, len(r))
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
    pooled = pooled_selection(PooledKID.build(reference, generated, seed), generated.column("Metadata_arm"),
                              accepted, n_seeds, n_bootstrap, max_subset, seed)
    selection = selection_gain(per_condition).merge(pooled, on="arm", how="left")
    return {"per_condition": per_condition, "selection": selection,
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
                                       "acceptance_rate": row.acceptance_rate,
                                       "pooled": {k: getattr(row, k) for k in POOLED_COLUMNS.values()}}
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
                          kid["min_subset"], cfg["deciles"]["n_bins"], cfg["n_random_seeds"], cfg["seed"],
                          kid["n_bootstrap"])
    out = Path(out_dir)
    for key in ("per_condition", "selection", "ranking", "deciles"):
        write_csv(tables[key], out / OUTPUTS[key])
    plot_ranking(tables["per_condition"], tables["ranking"], out / OUTPUTS["ranking_plot"])
    plot_selection(tables["per_condition"], tables["selection"], out / OUTPUTS["selection_plot"])
    plot_deciles(tables["deciles"], out / OUTPUTS["deciles_plot"])
    result = headline(tables)
    write_headline(result, out / OUTPUTS["headline"])
    return result
