"""The controlled coverage violation: take co-occurrences away from the seen arm step by step and watch the trust
score of the unseen conditions.

The trust score's guarantee assumes each value of an unseen condition was seen in training in enough contexts
(morphotrust.subsets.coverage). Here, for every unseen condition (cell type c, siRNA s), the seen conditions carrying s
are thinned to k of them (k = each of `levels`, e.g. 3, 2, 1: the siRNA seen with three, two, then one other
cell type; the ones kept are the first k in cell-type order). At each level the trust scorer is refitted and
recalibrated on the remaining real seen-arm features (the same encoder features the workflow computed, so no
image is re-encoded), and two things are measured on the unseen conditions:

- faithfulness AUROC: held-out real sites of each unseen condition (evaluation split) scored with their TRUE
  condition against the same sites scored with each WRONG siRNA of the same cell type; AUROC of -F (1 = F
  always prefers the true label, 0.5 = chance). It needs no generator. The same on the held-out sites of the
  seen conditions still in training is the reference (`faithfulness_auroc_seen`): what the encoder can do at all.
- selection gain: ΔKID (encoder space) of the trust-accepted generated images of the unseen conditions vs
  condition-matched random picks of the same size (morphotrust.validation.kid; positive = trust helps). Undefined
  (NaN, with the reason) when no generated image of an unseen condition is accepted: then there is nothing to
  select. With `generated.source: standins` the "generated" images are held-out real sites and their corrupted
  copies (copy, wrong label, blur, drift), so the gain measures whether trust still separates faithful from
  corrupted images of an unseen condition; the copies are the same real sites as the KID reference, which
  flatters them (as in the workflow's own stand-in validation).

Writes `coverage_experiment.csv` (one row per level), `coverage_experiment.json` and `coverage_experiment.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path, write_csv, write_json

ATTRIBUTES = ("cell_type", "sirna_id")
COLUMNS = ["level", "max_contexts_kept", "mean_contexts_kept", "seen_conditions_dropped", "n_fit", "n_calibration",
           "threshold", "faithfulness_auroc", "faithfulness_auroc_seen", "n_true", "n_wrong", "n_generated_unseen", "acceptance_unseen",
           "selection_gain", "selection_gain_note"]


def _read(path):
    from ..features import read_features

    meta, X, info = read_features(path)
    return meta.reset_index(drop=True), X.astype(np.float64), info


def _attrs(meta: pd.DataFrame) -> dict:
    return {"cell_type": meta["Metadata_cell_type"].astype(str).to_numpy(),
            "sirna_id": meta["Metadata_sirna_id"].astype(int).to_numpy()}


def dropped_conditions(seen: pd.DataFrame, unseen: pd.DataFrame, level: int) -> tuple[set, list]:
    """Seen (cell type, siRNA) pairs to remove so each unseen condition's siRNA keeps at most `level` seen cell
    types (the first in sorted order); and the number of cell types each unseen siRNA keeps."""
    drop, kept = set(), []
    pairs = set(zip(seen["cell_type"], seen["sirna_id"]))
    for cell_type, sirna_id in zip(unseen["cell_type"], unseen["sirna_id"]):
        contexts = sorted(c for c, s in pairs if s == sirna_id)
        drop |= {(c, sirna_id) for c in contexts[level:]}
        kept.append(min(level, len(contexts)))
    return drop, kept


def faithfulness_auroc(scorer, X: np.ndarray, meta: pd.DataFrame) -> tuple[float, int, int]:
    """AUROC of -F: true condition vs every wrong siRNA (of the scorer's vocabulary) with the same cell type."""
    from sklearn.metrics import roc_auc_score

    if len(meta) == 0:
        return np.nan, 0, 0
    attrs = _attrs(meta)
    true_f = scorer.score(X, attrs)["F"].to_numpy()
    wrong_f = []
    for sirna_id in scorer.values_["sirna_id"]:
        other = attrs["sirna_id"] != sirna_id
        if other.any():
            wrong = {"cell_type": attrs["cell_type"][other], "sirna_id": np.full(int(other.sum()), sirna_id)}
            wrong_f.append(scorer.score(X[other], wrong)["F"].to_numpy())
    wrong_f = np.concatenate(wrong_f) if wrong_f else np.array([])
    if len(wrong_f) == 0:
        return np.nan, len(true_f), 0
    labels = np.r_[np.ones(len(true_f)), np.zeros(len(wrong_f))]
    return float(roc_auc_score(labels, -np.r_[true_f, wrong_f])), len(true_f), len(wrong_f)


def selection_gain(scorer, X_gen, gen_meta, X_ref, ref_meta, kid_cfg: dict, seed: int) -> tuple[float, float, str]:
    """(acceptance rate, relative ΔKID improvement of accepted vs random, note) over the unseen generated images."""
    from ..validation.common import Table
    from ..validation.kid import kid_analysis

    if len(gen_meta) == 0:
        return np.nan, np.nan, "no generated image of an unseen condition"
    scores = scorer.score(X_gen, _attrs(gen_meta))
    accepted = scorer.accept(scores)
    if not accepted.any():
        return 0.0, np.nan, (f"undefined: 0 of {len(accepted)} generated images of the unseen conditions accepted, "
                             "so there is no selection to compare with random picks")
    meta = pd.concat([gen_meta.reset_index(drop=True), scores[["T", "R", "F"]].reset_index(drop=True)], axis=1)
    meta["accepted"] = accepted
    features = [f"f{i}" for i in range(X_gen.shape[1])]
    tables = kid_analysis(Table(ref_meta.reset_index(drop=True), X_ref, features), Table(meta, X_gen, features),
                          max_subset=kid_cfg.get("max_subset", 500), n_subsets=kid_cfg.get("n_subsets", 10),
                          min_subset=kid_cfg.get("min_subset", 20), n_seeds=kid_cfg.get("n_random_seeds", 5),
                          seed=seed)
    row = tables["selection"].set_index("arm").loc["all"]
    gain = float(row["relative_improvement"])
    note = "" if np.isfinite(gain) else (f"undefined: no unseen condition has both accepted images and enough real "
                                         f"sites for KID ({int(row['n_conditions_without_selection'])} without)")
    small = tables["per_condition"]["flag"].astype(str).str.len().gt(0).sum()
    if np.isfinite(gain) and small:
        note = f"{small} condition(s) with small KID subsets: noisy"
    return float(accepted.mean()), gain, note


def experiment_config(config: dict) -> dict:
    """The experiment's settings from the checked workflow config: levels, the trust section, the validation KID
    settings (plus n_random_seeds) and the validation seed."""
    validation = config["validation"]
    return {"levels": config["coverage_experiment"]["levels"], "trust": config["trust"],
            "kid": {**validation["kid"], "n_random_seeds": validation["n_random_seeds"]}, "seed": validation["seed"]}


def run(train, calibration, evaluation, generated, cfg: dict, out_dir) -> pd.DataFrame:
    """The experiment on the workflow's feature tables. `cfg`: levels, trust (the trust section), kid (the
    validation.kid section, plus n_random_seeds), seed."""
    from ..trust import TrustScorer, trust_config

    levels = [int(k) for k in cfg["levels"]]
    if not levels or min(levels) < 1:
        raise InputError(f"levels {levels}", where="config coverage_experiment.levels",
                         expected="one or more numbers of seen cell types to keep, each at least 1")
    trust_cfg = trust_config(json.dumps(cfg.get("trust", {})))
    fit_meta, X_fit, _ = _read(train)
    cal_meta, X_cal, _ = _read(calibration)
    ev_meta, X_ev, _ = _read(evaluation)
    gen_meta, X_gen, _ = _read(generated)

    def studied(meta, arm):
        return (meta["Metadata_arm"] == arm).to_numpy()

    conditions = pd.concat([fit_meta, ev_meta])[["Metadata_condition", "Metadata_arm", "Metadata_cell_type",
                                                 "Metadata_sirna_id"]].drop_duplicates("Metadata_condition")
    conditions.columns = ["condition", "arm", "cell_type", "sirna_id"]
    seen, unseen = conditions[conditions["arm"] == "seen"], conditions[conditions["arm"] == "unseen"]
    if unseen.empty:
        raise InputError("no unseen condition in the evaluation features", file=evaluation,
                         expected="an `unseen` list in the conditions file")
    ev_unseen = studied(ev_meta, "unseen")
    gen_unseen = studied(gen_meta, "unseen")
    rows = []
    for level in levels:
        drop, kept = dropped_conditions(seen, unseen, level)

        def keep(meta):
            pairs = zip(meta["Metadata_cell_type"].astype(str), meta["Metadata_sirna_id"].astype(int))
            return studied(meta, "seen") & np.array([p not in drop for p in pairs], dtype=bool)

        fit_rows = keep(fit_meta)
        scorer = TrustScorer(attributes=ATTRIBUTES, regularization=trust_cfg["regularization"],
                             calibration=trust_cfg["calibration"],
                             min_samples_per_value=trust_cfg["min_samples_per_value"],
                             realism=trust_cfg["realism"], quantile=trust_cfg["quantile"])
        if trust_cfg["calibration_source"] == "calibration_split":
            cal_rows = keep(cal_meta)
            scorer.fit(X_fit[fit_rows], _attrs(fit_meta[fit_rows]), X_cal[cal_rows], _attrs(cal_meta[cal_rows]))
        else:
            scorer.fit(X_fit[fit_rows], _attrs(fit_meta[fit_rows]))
        auroc, n_true, n_wrong = faithfulness_auroc(scorer, X_ev[ev_unseen], ev_meta[ev_unseen])
        ev_seen = keep(ev_meta)  # reference: held-out sites of the seen conditions still in training
        auroc_seen = faithfulness_auroc(scorer, X_ev[ev_seen], ev_meta[ev_seen])[0]
        acceptance, gain, note = selection_gain(scorer, X_gen[gen_unseen], gen_meta[gen_unseen], X_ev[ev_unseen],
                                                ev_meta[ev_unseen], cfg.get("kid", {}), int(cfg.get("seed", 0)))
        rows.append({"level": level, "max_contexts_kept": max(kept), "mean_contexts_kept": float(np.mean(kept)),
                     "seen_conditions_dropped": len(drop), "n_fit": scorer.n_fit_samples_,
                     "n_calibration": scorer.n_calibration_samples_, "threshold": scorer.threshold_,
                     "faithfulness_auroc": auroc, "faithfulness_auroc_seen": auroc_seen, "n_true": n_true, "n_wrong": n_wrong,
                     "n_generated_unseen": int(gen_unseen.sum()), "acceptance_unseen": acceptance,
                     "selection_gain": gain, "selection_gain_note": note})
        print(f"level {level}: dropped {len(drop)} seen condition(s), fitted on {scorer.n_fit_samples_} sites; "
              f"faithfulness AUROC {auroc:.3f}; unseen acceptance {acceptance:.1%}; selection gain {gain:.3f} "
              f"{note}", flush=True)
    table = pd.DataFrame(rows, columns=COLUMNS)
    out_dir = Path(out_dir)
    write_csv(table, out_dir / "coverage_experiment.csv")
    names = sorted(gen_meta["Metadata_generator"].astype(str).unique()) if "Metadata_generator" in gen_meta else []
    source = ("STAND-INS from held-out real sites, not a generator" if names and all(n.startswith("standin:")
              for n in names) else ", ".join(names) or "unknown")
    write_json({"levels": levels, "unseen_conditions": unseen["condition"].tolist(), "generated": source,
                "rows": json.loads(table.to_json(orient="records"))}, out_dir / "coverage_experiment.json")
    plot(table, source, out_dir / "coverage_experiment.png")
    return table


def plot(table: pd.DataFrame, source: str, path) -> None:
    """Two panels over the number of seen cell types per unseen siRNA: faithfulness AUROC, selection gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = table["max_contexts_kept"].to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].plot(x, table["faithfulness_auroc"], "o-", label="unseen conditions")
    axes[0].plot(x, table["faithfulness_auroc_seen"], "s--", color="grey", label="seen (reference)")
    axes[0].axhline(0.5, color="grey", linestyle=":", label="chance")
    axes[0].set_ylabel("faithfulness AUROC\n(true vs wrong siRNA, held-out real sites)")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    gain = table["selection_gain"].to_numpy(dtype=float)
    axes[1].plot(x, gain, "o-")
    axes[1].axhline(0, color="grey", linestyle=":")
    for xi, g, note in zip(x, gain, table["selection_gain_note"]):
        if not np.isfinite(g):
            axes[1].annotate("undefined:\nnothing accepted" if "accepted" in note else "undefined", (xi, 0),
                             ha="center", fontsize=7, color="firebrick")
    axes[1].set_ylabel("selection gain\n(ΔKID, accepted vs random, relative)")
    for ax in axes:
        ax.set_xlabel("seen cell types per unseen siRNA")
        ax.set_xticks(sorted(set(x)))
        ax.set_xlim(max(x) + 0.3, min(x) - 0.3)  # fewer seen contexts to the right; fixed even when all NaN
    fig.suptitle(f"Controlled coverage violation on the unseen conditions (generated: {source})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
