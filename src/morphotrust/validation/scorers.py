"""Is T better than simpler scores? Every per-sample score of results/baselines/ judged exactly as T is.

For each scorer (T, R alone, F alone and the baselines of `morphotrust.trust.baselines`) and arm (all, seen, unseen),
with the same functions, seeds and settings the T-only analyses use:

- acceptance at its own P95-of-real threshold, and whether that threshold is degenerate: it accepts at least
  the quantile's share (95%) of the generated images, i.e. it cannot tell generated from real at all;
- ΔKID selection gain pooled over the arm's conditions (kid.pooled_selection: accepted vs condition-matched
  random, relative, with its condition-stratified bootstrap 95% interval; positive = the score's selection is
  closer to real images);
- Spearman ρ over conditions of the mean score vs ΔKID of the condition's generated images (kid_per_condition.csv;
  positive = the score ranks conditions as KID does);
- CellProfiler centroid Δz, accepted − condition-matched random, with its bootstrap 95% interval
  (centroid.accepted_vs_random; negative = accepted images closer to real cells);
- per-sample Spearman ρ of the score vs centroid z over every measured image, with its bootstrap 95% interval
  (centroid.ranking_by_arm; positive = the score orders images as CellProfiler does).

Writes scorers.csv (one row per scorer and arm), scorers.png and the headline scorers.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import read_json, write_csv
from .centroid import accepted_vs_random, ranking_by_arm
from .common import ANALYSED_ARMS, _require_columns, load_space, reference, save_figure, settings, write_headline
from .kid import PooledKID, pooled_selection
from .stats import spearman

OUTPUTS = {"table": "scorers.csv", "plot": "scorers.png", "headline": "scorers.json"}
ARMS = ("all", *ANALYSED_ARMS)
COLUMNS = ["scorer", "label", "arm", "n_generated", "acceptance", "degenerate", "threshold",
           "kid_gain", "kid_gain_ci_low", "kid_gain_ci_high", "kid_delta_accepted", "kid_delta_random",
           "kid_n_accepted", "rho_conditions", "rho_conditions_p", "n_conditions",
           "delta_z", "delta_z_ci_low", "delta_z_ci_high", "n_accepted_measured",
           "spearman_z", "spearman_z_ci_low", "spearman_z_ci_high", "n_measured"]


def _in_arm(arms: np.ndarray, arm: str) -> np.ndarray:
    return np.ones(len(arms), bool) if arm == "all" else arms == arm


def condition_ranking(scores: pd.DataFrame, score: str, kid_per_condition: pd.DataFrame) -> dict:
    """Per arm: (ρ, p, n) of the mean `score` per condition vs the condition's ΔKID."""
    means = scores.groupby("Metadata_condition")[score].mean()
    table = kid_per_condition.assign(mean=kid_per_condition["condition"].astype(str).map(means))
    return {arm: spearman(table.loc[_in_arm(table["arm"].to_numpy(), arm), "mean"],
                          table.loc[_in_arm(table["arm"].to_numpy(), arm), "delta_kid"]) for arm in ARMS}


def compare(scores: pd.DataFrame, thresholds: dict, quantile: float, per_sample: pd.DataFrame,
            kid_per_condition: pd.DataFrame, pooled: PooledKID, pooled_ids: np.ndarray, pooled_arms: np.ndarray,
            cfg: dict) -> pd.DataFrame:
    """The comparison table (module docstring). `scores`: results/baselines/generated_scores (a column and an
    `accepted_<name>` column per scorer); `per_sample`: centroid_per_sample.csv; `pooled`: the pooled-KID kernel
    means of the generated rows with sample ids `pooled_ids` and arms `pooled_arms`."""
    cfg = settings(cfg)
    by_id = scores.set_index(scores["Metadata_sample_id"].astype(str))
    measured = per_sample[per_sample["sample_id"].astype(str).isin(by_id.index)].reset_index(drop=True)
    measured_ids = measured["sample_id"].astype(str).to_numpy()
    arms = scores["Metadata_arm"].astype(str).to_numpy()
    seed, n_seeds = cfg["seed"], cfg["n_random_seeds"]
    rows = []
    for name, kappa in thresholds.items():
        accepted = scores[f"accepted_{name}"].to_numpy(dtype=bool)
        kid = pooled_selection(pooled, pooled_arms, by_id.loc[pooled_ids, f"accepted_{name}"].to_numpy(dtype=bool),
                               n_seeds, cfg["kid"]["n_bootstrap"], cfg["kid"]["max_subset"], seed).set_index("arm")
        ranked = condition_ranking(scores, name, kid_per_condition)
        chosen = measured.assign(accepted=by_id.loc[measured_ids, f"accepted_{name}"].to_numpy(dtype=bool),
                                 **{name: by_id.loc[measured_ids, name].to_numpy(dtype=float)})
        centroid, _ = accepted_vs_random(chosen, n_seeds, cfg["centroid"]["n_bootstrap"], seed)
        centroid = centroid[centroid["metric"] == "z"].set_index("arm")
        spearman_z = ranking_by_arm(chosen, name, cfg["centroid"]["n_bootstrap"], seed).set_index("arm")
        for arm in ARMS:
            mine = _in_arm(arms, arm)
            if not mine.any():
                continue
            acceptance = float(accepted[mine].mean())
            row = {"scorer": name, "label": _label(name), "arm": arm, "n_generated": int(mine.sum()),
                   "acceptance": acceptance, "degenerate": bool(acceptance >= quantile), "threshold": kappa}
            rho, p, n = ranked[arm]
            row.update(rho_conditions=rho, rho_conditions_p=p, n_conditions=n)
            if arm in kid.index:
                k = kid.loc[arm]
                row.update(kid_gain=k["pooled_relative_improvement"], kid_gain_ci_low=k["pooled_relative_ci_low"],
                           kid_gain_ci_high=k["pooled_relative_ci_high"],
                           kid_delta_accepted=k["pooled_delta_kid_accepted"],
                           kid_delta_random=k["pooled_delta_kid_random"], kid_n_accepted=k["pooled_n_accepted"])
            if arm in centroid.index:
                c = centroid.loc[arm]
                row.update(delta_z=c["delta"], delta_z_ci_low=c["ci_low"], delta_z_ci_high=c["ci_high"],
                           n_accepted_measured=c["n_accepted"])
            if arm in spearman_z.index:
                s = spearman_z.loc[arm]
                row.update(spearman_z=s["spearman_rho"], spearman_z_ci_low=s["ci_low"],
                           spearman_z_ci_high=s["ci_high"], n_measured=s["n_measured"])
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _label(name: str) -> str:
    from ..trust.baselines import SCORERS

    return SCORERS.get(name, (name,))[0]


def plot_scorers(table: pd.DataFrame, path, gain_limit: float = 2.0) -> None:
    """Three panels, one row per scorer: ΔKID gain, centroid Δz and Spearman(score, z), with 95% intervals, for
    the seen and unseen arms. Relative gains are drawn within ±`gain_limit` (a score accepting one or two images
    can have an interval of ±3000%)."""
    import matplotlib.pyplot as plt

    panels = [("kid_gain", "ΔKID selection gain (relative, pooled)\npositive = closer to real images"),
              ("delta_z", "centroid Δz, accepted − random\nnegative = closer to real cells"),
              ("spearman_z", "Spearman ρ(score, centroid z) per image\npositive = ranks as CellProfiler does")]
    names = list(dict.fromkeys(table["scorer"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(names) + 1.6), sharey=True)
    for ax, (column, title) in zip(axes, panels):
        clipped = False
        for offset, (arm, colour) in zip((-0.15, 0.15), zip(ANALYSED_ARMS, ("tab:blue", "tab:orange"))):
            rows = table[table["arm"] == arm].set_index("scorer").reindex(names)
            y = np.arange(len(names)) + offset
            value, low, high = (rows[c].to_numpy(dtype=float) for c in (column, f"{column}_ci_low", f"{column}_ci_high"))
            if column == "kid_gain":
                before = np.nan_to_num(np.c_[value, low, high])
                value, low, high = (np.clip(v, -gain_limit, gain_limit) for v in (value, low, high))
                clipped |= bool((np.abs(before) > gain_limit).any())
            ok = np.isfinite(value)
            error = np.vstack([np.nan_to_num(value - low), np.nan_to_num(high - value)])[:, ok]
            ax.errorbar(value[ok], y[ok], xerr=np.maximum(error, 0), fmt="o", color=colour, capsize=3,
                        markersize=4, label=f"{arm} arm")
        if not table[column].notna().any():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title + (f"\n(drawn within ±{gain_limit:.0%})" if clipped else ""), fontsize=9)
    axes[0].set_yticks(np.arange(len(names)), [_label(n) for n in names], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2)
    fig.suptitle("Every score judged as T is (95% bootstrap intervals)", fontsize=10, y=1.06)
    save_figure(fig, path)


def headline(table: pd.DataFrame) -> dict:
    out = {}
    for row in table.itertuples():
        out.setdefault(row.scorer, {"label": row.label})[row.arm] = {
            "acceptance": row.acceptance, "degenerate": row.degenerate,
            "kid_gain": row.kid_gain, "kid_gain_ci": [row.kid_gain_ci_low, row.kid_gain_ci_high],
            "rho_conditions": row.rho_conditions,
            "delta_z": row.delta_z, "delta_z_ci": [row.delta_z_ci_low, row.delta_z_ci_high],
            "spearman_z": row.spearman_z, "spearman_z_ci": [row.spearman_z_ci_low, row.spearman_z_ci_high]}
    return out


def _read_csv(path, columns) -> pd.DataFrame:
    if not Path(path).is_file():
        raise InputError("file not found", file=path, expected="the output of an earlier validation rule")
    frame = pd.read_csv(path)
    _require_columns(frame, columns, path)
    return frame


def run(real_paths, generated_path, trust_path, scores_path, thresholds_path, centroid_path, kid_path, out_dir,
        cfg: dict | None = None) -> dict:
    cfg = settings(cfg)
    real, generated = load_space("encoder", real_paths, generated_path, trust_path)
    thresholds_json = read_json(thresholds_path)
    from ..trust.baselines import SCORERS

    entries = thresholds_json["scorers"]
    thresholds = {name: entries[name]["threshold"] for name in [*SCORERS, *sorted(set(entries) - set(SCORERS))]
                  if name in entries}
    scores = pd.read_parquet(scores_path)
    needed = ["Metadata_sample_id", "Metadata_condition", "Metadata_arm", *thresholds,
              *(f"accepted_{name}" for name in thresholds)]
    _require_columns(scores, needed, scores_path)
    scores = scores[scores["Metadata_arm"].isin(ANALYSED_ARMS)].reset_index(drop=True)
    ids = generated.column("Metadata_sample_id").astype(str)
    absent = ~pd.Index(ids).isin(scores["Metadata_sample_id"].astype(str))
    if absent.any():
        raise InputError(f"{int(absent.sum())} generated sample(s) have no baseline scores", file=scores_path,
                         where=f"e.g. {ids[absent][0]!r}", expected=f"every sample of {generated_path}")
    centroid_columns = ["sample_id", "condition", "arm", "distance", "excess_distance", "z"]
    # no centroid file where CellProfiler validation is not applicable (external composites or crops)
    per_sample = (_read_csv(centroid_path, centroid_columns) if centroid_path
                  else pd.DataFrame(columns=centroid_columns))
    # header only when CellProfiler measured no generated image: the numbers are then read as text
    per_sample = per_sample.astype({"distance": float, "excess_distance": float, "z": float})
    kid_per_condition = _read_csv(kid_path, ["condition", "arm", "delta_kid"])
    pooled = PooledKID.build(reference(real, cfg["reference_splits"]), generated, cfg["seed"])
    table = compare(scores, thresholds, thresholds_json["quantile"], per_sample, kid_per_condition, pooled, ids,
                    generated.column("Metadata_arm").astype(str), cfg)
    out = Path(out_dir)
    write_csv(table, out / OUTPUTS["table"])
    plot_scorers(table, out / OUTPUTS["plot"])
    result = headline(table)
    write_headline(result, out / OUTPUTS["headline"])
    return result
