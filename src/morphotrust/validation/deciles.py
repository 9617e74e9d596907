"""Decile classifiers: do the best-trusted generated samples teach a classifier more about real cells?

Within each condition, generated samples are sorted by trust T (best = lowest first) and cut into 10 equal
bins; decile i is the union of bin i over conditions (so every decile is condition-balanced). For each
decile a StandardScaler + logistic regression is trained on its generated samples and tested on held-out
real samples (the real evaluation split); targets are cell type and condition, scored by balanced accuracy.
References: the same deciles of a random within-condition order (5 seeds), and the real ceiling (trained on
the real train split, tested on the real evaluation split). Run in CellProfiler space and encoder space.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from ..errors import InputError
from ..io import write_csv
from .common import ANALYSED_ARMS, SPACE_NAMES, Table, load_space, save_figure, settings, write_headline
from .stats import group_codes, random_bins, spearman, trust_bins

TARGETS = {"cell_type": "Metadata_cell_type", "condition": "Metadata_condition"}
TARGET_NAMES = {"cell_type": "cell type", "condition": "condition (cell type × siRNA)"}


def outputs(space: str) -> dict:
    return {"table": f"deciles_{space}.csv", "plot": f"deciles_{space}.png", "headline": f"deciles_{space}.json"}


def fit_and_score(X_train, y_train, X_test, y_test, test_groups: dict, C: float, max_iter: int, seed: int) -> dict:
    """Balanced accuracy on each named test subset (boolean masks over test rows) of a StandardScaler +
    logistic regression fitted on the training rows; NaN everywhere if training has < 2 classes."""
    if len(np.unique(y_train)) < 2 or len(y_test) == 0:
        return {name: np.nan for name in test_groups}
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # small deciles of many conditions have few samples per class: expected here, not a mistake
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        model.fit(X_train, y_train)
    predicted = model.predict(X_test)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" on subsets
        for name, mask in test_groups.items():
            scores[name] = balanced_accuracy_score(y_test[mask], predicted[mask]) if mask.any() else np.nan
    return scores


def decile_classifiers(generated: Table, real_train: Table, real_test: Table, n_bins: int = 10,
                       n_seeds: int = 5, seed: int = 0, C: float = 1.0, max_iter: int = 200) -> pd.DataFrame:
    """One row per (target, test arm, decile): balanced accuracy of the trust-ranked decile, of the random
    ranking (mean and SD over seeds), and the real ceiling. Deciles are numbered 1 (most trusted) .. n_bins.

    Test rows are the real rows of `real_test` whose condition was generated; the real ceiling is trained on
    `real_train` and tested on the test rows whose label occurs in `real_train` (unseen conditions have no
    real training rows, so the condition ceiling covers seen conditions only).
    """
    codes, names = group_codes(generated.conditions)
    test = real_test.subset(np.isin(real_test.conditions, names))
    train = real_train.subset(np.isin(real_train.conditions, names))
    test_arm = test.column("Metadata_arm").astype(str)
    rankings = {("trust", 0): trust_bins(codes, generated.column("T"), n_bins)}
    for s in range(n_seeds):
        rankings[("random", s)] = random_bins(codes, n_bins, np.random.default_rng([seed, 100 + s]))
    rows = []
    progress = tqdm(total=len(TARGETS) * (len(rankings) * n_bins + 1), desc="decile classifiers", mininterval=5)
    for target, column in TARGETS.items():
        y_gen = generated.column(column).astype(str)
        y_test = test.column(column).astype(str)
        groups = {"all": np.ones(len(test), bool)}
        groups.update({arm: test_arm == arm for arm in ANALYSED_ARMS if (test_arm == arm).any()})
        for (ranking, s), bins in rankings.items():
            for decile in range(n_bins):
                in_decile = bins == decile
                scores = fit_and_score(generated.X[in_decile], y_gen[in_decile], test.X, y_test, groups,
                                       C, max_iter, seed)
                rows += [{"target": target, "ranking": ranking, "seed": s, "decile": decile + 1, "test_arm": arm,
                          "balanced_accuracy": score, "n_train": int(in_decile.sum()),
                          "n_test": int(groups[arm].sum())} for arm, score in scores.items()]
                progress.update()
        y_train = train.column(column).astype(str)
        covered = np.isin(y_test, np.unique(y_train))
        ceiling = fit_and_score(train.X, y_train, test.X, y_test,
                                {arm: mask & covered for arm, mask in groups.items()}, C, max_iter, seed)
        rows += [{"target": target, "ranking": "real ceiling", "seed": 0, "decile": 0, "test_arm": arm,
                  "balanced_accuracy": score, "n_train": len(train), "n_test": int((groups[arm] & covered).sum())}
                 for arm, score in ceiling.items()]
        progress.update()
    progress.close()
    return _wide(pd.DataFrame(rows), generated, test)


def _wide(long: pd.DataFrame, generated: Table, test: Table) -> pd.DataFrame:
    keys = ["target", "test_arm", "decile"]
    trust = long[long["ranking"] == "trust"].set_index(keys)
    random = long[long["ranking"] == "random"].groupby(keys)["balanced_accuracy"]
    ceiling = long[long["ranking"] == "real ceiling"].set_index(["target", "test_arm"])
    table = pd.DataFrame({
        "balanced_accuracy_trust": trust["balanced_accuracy"],
        "balanced_accuracy_random_mean": random.mean(),
        "balanced_accuracy_random_sd": random.std(ddof=1),
        "n_train": trust["n_train"],
        "n_test": trust["n_test"],
    }).reset_index()
    index = pd.MultiIndex.from_frame(table[["target", "test_arm"]])
    table["balanced_accuracy_real_ceiling"] = ceiling["balanced_accuracy"].reindex(index).to_numpy()
    table["n_test_real_ceiling"] = ceiling["n_test"].reindex(index).to_numpy()
    n_classes = {t: len(np.unique(test.column(c).astype(str))) for t, c in TARGETS.items()}
    table["chance"] = 1.0 / table["target"].map(n_classes)
    return table


def plot_deciles(table: pd.DataFrame, space: str, path) -> None:
    import matplotlib.pyplot as plt

    arms = [a for a in ("all", *ANALYSED_ARMS) if a in set(table["test_arm"])]
    fig, axes = plt.subplots(len(TARGETS), len(arms), figsize=(4.2 * len(arms), 3.6 * len(TARGETS)),
                             squeeze=False, sharex=True)
    for i, target in enumerate(TARGETS):
        for j, arm in enumerate(arms):
            ax = axes[i, j]
            rows = table[(table["target"] == target) & (table["test_arm"] == arm)].sort_values("decile")
            x = rows["decile"].to_numpy()
            ax.plot(x, rows["balanced_accuracy_trust"], "o-", color="tab:blue", label="ranked by trust")
            mean, sd = rows["balanced_accuracy_random_mean"], rows["balanced_accuracy_random_sd"].fillna(0)
            ax.plot(x, mean, "s--", color="tab:orange", label="random ranking (mean ± SD)")
            ax.fill_between(x, mean - sd, mean + sd, color="tab:orange", alpha=0.2)
            if len(rows):
                ax.axhline(rows["balanced_accuracy_real_ceiling"].iloc[0], color="tab:green", linestyle="-.",
                           label="trained on real cells (ceiling)")
                ax.axhline(rows["chance"].iloc[0], color="grey", linestyle=":", label="chance")
            ax.set_title(f"predict {TARGET_NAMES[target]}\nreal test cells: {arm}", fontsize=10)
            ax.set_ylabel("balanced accuracy on real cells")
            if i == len(TARGETS) - 1:
                ax.set_xlabel("decile of generated samples (1 = most trusted)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Classifiers trained on one trust decile of generated samples ({SPACE_NAMES[space]})")
    save_figure(fig, path)


def headline(table: pd.DataFrame) -> dict:
    out = {}
    for target in TARGETS:
        rows = table[(table["target"] == target) & (table["test_arm"] == "all")].sort_values("decile")
        if not len(rows):
            continue
        rho, p, _ = spearman(rows["decile"], rows["balanced_accuracy_trust"])
        out[target] = {
            "most_trusted_decile": rows["balanced_accuracy_trust"].iloc[0],
            "least_trusted_decile": rows["balanced_accuracy_trust"].iloc[-1],
            "random_ranking_mean": rows["balanced_accuracy_random_mean"].mean(),
            "real_ceiling": rows["balanced_accuracy_real_ceiling"].iloc[0],
            "chance": rows["chance"].iloc[0],
            "spearman_decile_vs_accuracy": rho, "spearman_p": p,
        }
    return out


def run(space: str, real_paths, generated_path, trust_path, out_dir, cfg: dict | None = None) -> dict:
    """Decile classifiers in one feature space (`cp` or `encoder`); writes the table, plot and headline."""
    cfg = settings(cfg)
    real, generated = load_space(space, real_paths, generated_path, trust_path)
    split = real.column("Metadata_split").astype(str)
    if not (split == "evaluation").any():
        files = real_paths if isinstance(real_paths, (str, Path)) else ", ".join(map(str, real_paths))
        raise InputError("no real rows of the evaluation split", file=files,
                         expected="held-out real samples (Metadata_split evaluation)")
    settings_ = cfg["deciles"]
    table = decile_classifiers(generated, real.subset(split == "train"), real.subset(split == "evaluation"),
                               settings_["n_bins"], cfg["n_random_seeds"], cfg["seed"], settings_["C"],
                               settings_["max_iter"])
    table.insert(0, "space", space)
    out, names = Path(out_dir), outputs(space)
    write_csv(table, out / names["table"])
    plot_deciles(table, space, out / names["plot"])
    result = headline(table)
    write_headline(result, out / names["headline"])
    return result
