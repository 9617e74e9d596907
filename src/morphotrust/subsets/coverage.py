"""Coverage of the unseen conditions by the seen arm: the assumption the trust score rests on.

An unseen condition (a new cell type x siRNA combination) can only be generated and scored if each of its
attribute values was seen in training, and the paper's guarantee needs "enough diversity": the siRNA seen
with several cell types, not one. `load_conditions` already stops a run whose unseen value occurs in no seen
condition; this module measures how WELL each value is covered and flags the thin cases before training.

Per unseen condition and attribute (cell_type, sirna_id), the table `results/subsets/coverage.csv` holds:

- `value`                 the attribute value of the unseen condition (e.g. siRNA 3)
- `n_seen_conditions`     seen conditions carrying that value
- `n_train_sites`         training-split real sites carrying that value
- `n_contexts`            distinct combinations of the OTHER attributes it was seen with (with two attributes:
                          the siRNA's cell types, or the cell type's siRNAs); equals n_seen_conditions for two
                          attributes, kept apart so the meaning stays clear
- `contexts`              those combinations, `|`-joined (e.g. `HEPG2|RPE`)
- `low`                   True when n_contexts < subsets.coverage.min_contexts or n_train_sites <
                          subsets.coverage.min_train_sites
- `reason`                why it is low, in words ("" when not)

Per condition, `coverage_low` is True when any of its attributes is low; `coverage_note` joins the reasons.
"""

from __future__ import annotations

import pandas as pd

from ..errors import InputError
from ..io import write_csv

ATTRIBUTES = ("cell_type", "sirna_id")
COLUMNS = ["condition", "cell_type", "sirna_id", "attribute", "value", "n_seen_conditions", "n_train_sites",
           "n_contexts", "contexts", "low", "reason"]
NAMES = {"cell_type": "cell type", "sirna_id": "siRNA"}


def coverage_table(conditions: pd.DataFrame, manifest: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per (unseen condition, attribute). `conditions` from `load_conditions` (columns condition, arm,
    cell_type, sirna_id); `manifest` from `subsets.build_manifest` (training rows: Metadata_split == train,
    Metadata_arm == seen); `cfg`: the `subsets.coverage` config section (min_contexts, min_train_sites)."""
    seen = conditions[conditions["arm"] == "seen"]
    train = manifest[(manifest["Metadata_split"] == "train") & (manifest["Metadata_arm"] == "seen")]
    rows = []
    for condition in conditions[conditions["arm"] == "unseen"].itertuples(index=False):
        for attribute in ATTRIBUTES:
            value = getattr(condition, attribute)
            others = [a for a in ATTRIBUTES if a != attribute]
            carrying = seen[seen[attribute] == value]
            contexts = sorted({"/".join(str(v) for v in row) for row in carrying[others].itertuples(index=False)})
            n_sites = int((train[f"Metadata_{attribute}"] == value).sum())
            reasons = []
            if len(contexts) < cfg["min_contexts"]:
                other_names = " x ".join(NAMES[a] for a in others)
                reasons.append(f"{NAMES[attribute]} {value} seen with {len(contexts)} {other_names}"
                               f"{'' if len(contexts) == 1 else 's'} (minimum {cfg['min_contexts']})")
            if n_sites < cfg["min_train_sites"]:
                reasons.append(f"{NAMES[attribute]} {value} has {n_sites} training site(s) "
                               f"(minimum {cfg['min_train_sites']})")
            rows.append({"condition": condition.condition, "cell_type": condition.cell_type,
                         "sirna_id": int(condition.sirna_id), "attribute": attribute, "value": str(value),
                         "n_seen_conditions": len(carrying), "n_train_sites": n_sites,
                         "n_contexts": len(contexts), "contexts": "|".join(contexts), "low": bool(reasons),
                         "reason": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=COLUMNS)


def per_condition(table: pd.DataFrame) -> pd.DataFrame:
    """condition, coverage_low, coverage_note (one row per unseen condition)."""
    if table.empty:
        return pd.DataFrame(columns=["condition", "coverage_low", "coverage_note"])
    groups = table.groupby("condition", sort=True)
    return pd.DataFrame({
        "coverage_low": groups["low"].any(),
        "coverage_note": groups["reason"].agg(lambda r: "; ".join(x for x in r if x)),
    }).reset_index()


def warnings(table: pd.DataFrame) -> list[str]:
    """One line per low-coverage unseen condition, for the log."""
    return [f"WARNING: low coverage of unseen condition {row.condition}: {row.coverage_note}"
            for row in per_condition(table).itertuples() if row.coverage_low]


def write(conditions: pd.DataFrame, manifest: pd.DataFrame, cfg: dict, path) -> pd.DataFrame:
    """Write the coverage table and print a warning per low-coverage condition (the subsets log)."""
    table = coverage_table(conditions, manifest, cfg)
    write_csv(table, path)
    for line in warnings(table):
        print(line, flush=True)
    low = per_condition(table)["coverage_low"].sum() if len(table) else 0
    print(f"coverage: {low} of {table['condition'].nunique()} unseen condition(s) below the configured minimum "
          f"(subsets.coverage); table {path}", flush=True)
    return table


def read(path) -> pd.DataFrame:
    """The coverage table, checked for its columns."""
    try:
        table = pd.read_csv(path, keep_default_na=False, dtype={"value": str, "contexts": str, "reason": str})
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the coverage table ({error})", file=path,
                         expected="results/subsets/coverage.csv written by the subsets stage") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}", file=path, expected=f"columns {COLUMNS}")
    table["low"] = table["low"].astype(str).str.lower().eq("true")
    return table


def annotate(scores: pd.DataFrame, coverage: pd.DataFrame) -> pd.DataFrame:
    """Add `coverage_low` (bool; False for seen conditions) and `coverage_note` to per-sample scores, by
    Metadata_condition (or cell type:siRNA id when that column is absent)."""
    from .conditions import condition_key

    if "Metadata_condition" in scores.columns:
        keys = scores["Metadata_condition"].astype(str)
    else:
        keys = pd.Series([condition_key(c, s) for c, s in zip(scores["Metadata_cell_type"],
                                                              scores["Metadata_sirna_id"])], index=scores.index)
    lookup = per_condition(coverage).set_index("condition")
    out = scores.copy()
    out["coverage_low"] = keys.map(lookup["coverage_low"]).fillna(False).astype(bool).to_numpy()
    out["coverage_note"] = keys.map(lookup["coverage_note"]).fillna("").to_numpy()
    return out
