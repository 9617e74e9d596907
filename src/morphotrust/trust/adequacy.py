"""Encoder adequacy: can the fitted trust score tell the values of each attribute apart at all?

Before F is trusted, the run measures on held-out real sites (the seen arm of the evaluation split: never used
to fit, calibrate or threshold the scorer; the calibration split is not used because its margins set the F
constants and κ) for every attribute k and value v:

- `nearest_prototype_accuracy`: among held-out sites whose true a_k = v, the share whose nearest prototype under
  the scorer's fitted precision P_k (argmin_u d_k(y; u)) is v;
- `margin_auroc`: every held-out site is scored as if it requested v; the AUROC of the margin M_k(y; v)
  separating sites whose true a_k ≠ v (positives, they should have the larger margin) from those whose true
  a_k = v. F_k is M_k standardised by constants of the requested value only, so this is also the AUROC of F_k.
  0.5 = chance: a wrong request for v is as likely to look faithful as a right one.

A value whose AUROC is below `min_auroc` (config trust.adequacy_min_auroc) is *not informative*: the run
prints a warning naming it and flags its F in generated_scores.csv and the summary's verdict table. A value with
no held-out site (or no site of another value) cannot be measured: AUROC NaN, flagged "not measured".
The trust score itself is unchanged; this is a report about the encoder.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ..errors import InputError

NOT_INFORMATIVE = "not informative"
NOT_MEASURED = "not measured"
INFORMATIVE = "informative"


def adequacy_table(scorer, X, attrs, min_auroc: float) -> pd.DataFrame:
    """One row per (attribute, value) of the fitted scorer: n_heldout, accuracy, AUROC, status."""
    rows = []
    for attribute in scorer.attributes_:
        vocabulary = list(scorer.values_[attribute])
        true = pd.Index(vocabulary).get_indexer(np.asarray(attrs[attribute]))
        if (true < 0).any():
            unknown = pd.unique(np.asarray(attrs[attribute])[true < 0])
            raise InputError(f"attribute '{attribute}': held-out value(s) {list(unknown)[:10]} have no real fitting "
                             "sample", where="held-out adequacy sites", expected="values the scorer was fitted on")
        distances = scorer.value_distances(X, attribute)  # (n, V), fitted precision
        nearest = distances.argmin(axis=1)
        for v, value in enumerate(vocabulary):
            others = np.delete(distances, v, axis=1)
            margin = distances[:, v] - others.min(axis=1) if others.shape[1] else np.zeros(len(distances))
            own = true == v
            accuracy = float(np.mean(nearest[own] == v)) if own.any() else np.nan
            auroc = float(roc_auc_score(~own, margin)) if own.any() and (~own).any() else np.nan
            status = NOT_MEASURED if np.isnan(auroc) else INFORMATIVE if auroc >= min_auroc else NOT_INFORMATIVE
            rows.append({"attribute": attribute, "value": value, "n_heldout": int(own.sum()),
                         "n_heldout_other": int((~own).sum()), "nearest_prototype_accuracy": accuracy,
                         "chance_accuracy": 1.0 / len(vocabulary), "margin_auroc": auroc,
                         "min_auroc": float(min_auroc), "status": status})
    return pd.DataFrame(rows)


def warnings(table: pd.DataFrame) -> list[str]:
    """One sentence per value whose F cannot be relied on."""
    lines = []
    for row in table.itertuples():
        name = "siRNA" if row.attribute == "sirna_id" else row.attribute.replace("_", " ")
        if row.status == NOT_INFORMATIVE:
            digits = 2 if round(row.margin_auroc, 2) < row.min_auroc else 4  # never print "0.75 (below 0.75)"
            lines.append(f"faithfulness for {name} {row.value} is not informative with this encoder: AUROC "
                         f"{row.margin_auroc:.{digits}f} (below {row.min_auroc:g}; nearest-prototype accuracy "
                         f"{row.nearest_prototype_accuracy:.0%} on {row.n_heldout} held-out sites)")
        elif row.status == NOT_MEASURED:
            lines.append(f"faithfulness for {name} {row.value} could not be checked: no held-out real site "
                         f"{'of this value' if row.n_heldout == 0 else 'of another value'}")
    return lines


def flag_columns(table: pd.DataFrame, requested: pd.DataFrame, attributes) -> pd.DataFrame:
    """Per sample and attribute, `F_<attribute>_adequacy`: the status of the requested value."""
    flags = {}
    for attribute in attributes:
        mine = table[table["attribute"] == attribute]
        lookup = dict(zip(mine["value"].map(str), mine["status"]))
        flags[f"F_{attribute}_adequacy"] = requested[f"Metadata_{attribute}"].map(
            lambda v: lookup.get(str(v), NOT_MEASURED)).to_numpy()
    return pd.DataFrame(flags, index=requested.index)
