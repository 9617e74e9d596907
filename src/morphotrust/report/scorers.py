"""Run-summary sections of issue 24: T beside simpler scores, which defects each score catches, and a paper's
published figures beside this run's (report.paper_figures). Self-contained: each function reads what it shows
from the results folder and returns one section, or "" when its inputs are absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..errors import InputError
from .html import esc, fmt, img, note, percent, section, table

ARMS = ("seen", "unseen", "all")
SHOWN_ARMS = ("seen", "unseen")  # the summary's tables; scorers.csv also has the two together ("all")


def interval(value, low, high, as_percent: bool = False) -> str:
    """"v [low, high]" for a person (percent points with `as_percent`); "–" when the value is missing."""
    show = percent if as_percent else fmt
    if value is None or not np.isfinite(float(value)):
        return "–"
    if low is None or high is None or not (np.isfinite(float(low)) and np.isfinite(float(high))):
        return show(value)
    return f"{show(value)} [{show(low)}, {show(high)}]"


def comparison_table(frame: pd.DataFrame, arm: str) -> pd.DataFrame:
    """The scorers of one arm as people read them (results/validation/scorers.csv)."""
    rows = frame[frame["arm"] == arm]
    return pd.DataFrame({
        "score": rows["label"],
        "accepted": rows["acceptance"].map(percent),
        "P95 threshold degenerate (≥ 95% accepted)": rows["degenerate"].map(lambda v: "yes" if v else "no"),
        "ΔKID gain, pooled [95% CI]": [interval(v, lo, hi, True) for v, lo, hi in
                                       zip(rows["kid_gain"], rows["kid_gain_ci_low"], rows["kid_gain_ci_high"])],
        "ρ (mean score vs ΔKID, conditions)": [fmt(v) for v in rows["rho_conditions"]],
        "centroid Δz [95% CI]": [interval(v, lo, hi) for v, lo, hi in
                                 zip(rows["delta_z"], rows["delta_z_ci_low"], rows["delta_z_ci_high"])],
        "Spearman ρ(score, z) per image [95% CI]": [
            interval(v, lo, hi) for v, lo, hi in zip(rows["spearman_z"], rows["spearman_z_ci_low"],
                                                     rows["spearman_z_ci_high"])],
        "images measured": rows["n_measured"].map(lambda v: fmt(int(v)) if np.isfinite(v) else "–"),
    })


def scorers_section(results_dir, paper: dict | None = None) -> str:
    """"Is T better than simpler scores?": the comparison table per arm, its figure, and the corruption AUROCs."""
    validation = Path(results_dir) / "validation"
    csv = validation / "scorers.csv"
    if not csv.is_file():
        return ""
    frame = pd.read_csv(csv)
    body = ""
    for arm in SHOWN_ARMS:
        if (frame["arm"] == arm).any():
            shown = comparison_table(frame, arm)
            body += f"<h3>{esc(arm)} arm</h3>" + table(
                shown, row_class=lambda row: "bad" if row["P95 threshold degenerate (≥ 95% accepted)"] == "yes"
                else ("good" if row["score"].startswith("T =") else ""))
    if (validation / "scorers.png").is_file():
        body += img((validation / "scorers.png").read_bytes(), "every score judged as T is")
    if paper and paper.get("scorers"):
        body += (f"<h3>The paper's scorer ablation ({esc(paper['source'])}, Table 14: its numbers, on RxRx1 "
                 "held-out)</h3>" + table(pd.DataFrame(paper["scorers"])))
    body += (
        '<p class="small">Every score is fitted on the same real training features as T, calibrated on the same real '
        "sites and thresholded at the same quantile of its real calibration scores (lower = more trusted for all). "
        "ΔKID gain: KID of the accepted images vs condition-matched random picks of the same size, pooled over the "
        "arm's conditions against a real reference with the same condition mix (a condition holds too few accepted "
        "images for its own KID), interval from a condition-stratified bootstrap. Table: "
        "<code>results/validation/scorers.csv</code>; scores: <code>results/baselines/</code>.</p>")
    body += corruptions_body(validation)
    return section(
        "scorers", "Is T better than simpler scores?",
        "The same checks as for T, for scores a reviewer would try first: R and F alone, a linear probe (its free "
        "energy, as in the paper's Table 14, and −log p of the requested values), the distance to the k-th nearest "
        "real site of the requested values (Table 14), and the realism score, precision and density of "
        "generative-model papers. Per arm: how many images each accepts, whether its threshold is degenerate (it "
        "accepts nearly everything: it cannot tell generated from real), how much closer to real images its "
        "selection is than random picks (ΔKID, centroid Δz), whether it ranks conditions (ρ) and single images "
        "(Spearman with centroid z) the way real cells do.",
        "T's row best or close to the best: a threshold that is not degenerate, ΔKID gain above 0 and Δz below 0 "
        "with intervals that exclude 0, ρ and Spearman clearly above 0. A score with a degenerate threshold (red) "
        "selects nothing, however well it ranks.", body)


def corruptions_body(validation: Path) -> str:
    csv = validation / "corruptions.csv"
    if not csv.is_file():
        return ""
    frame = pd.read_csv(csv)
    grid = frame.pivot(index="corruption", columns="label", values="auroc")
    grid = grid.reindex(index=list(dict.fromkeys(frame["corruption"])), columns=list(dict.fromkeys(frame["label"])))
    shown = grid.apply(lambda column: column.map(lambda v: f"{v:.2f}" if np.isfinite(v) else "–")).reset_index()
    body = ("<h3>Which defects each score catches (held-out real sites, clean vs corrupted copies; AUROC)</h3>"
            + table(shown))
    body += ('<p class="small">Held-out real sites of the seen arm (never used to fit, calibrate or threshold any '
             "score) scored clean and as corrupted copies: one stain zeroed, two stains swapped, noise, blur, "
             "intensity ×0.4, requested under a wrong siRNA or cell type, and mode collapse (every site of a "
             "condition replaced by one of them). AUROC 1 = every corrupted copy scored worse than every clean "
             "site, 0.5 = chance. Mode collapse leaves each image real, so no per-image score can see it (≈ 0.5 "
             "expected): KID and the decile classifiers, which judge sets, are the checks for it. Table with the "
             "acceptance of each set: <code>results/validation/corruptions.csv</code>.</p>")
    return body


# --- a paper's figures beside the run's ------------------------------------------------------------------------

PAPER_COLUMNS = {"acceptance": "accepted", "kid_gain": "ΔKID gain", "rho_T": "ρ(T)", "rho_R": "ρ(R)",
                 "rho_F": "ρ(F)", "z_accepted": "centroid z accepted", "z_random": "centroid z random"}


def read_paper_figures(path) -> dict | None:
    """The published figures named by report.paper_figures (e.g. resources/paper/arxiv_2606.09601_rxrx1.yaml)."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path, where="report.paper_figures",
                         expected="a YAML file of published figures (resources/paper/)")
    figures = yaml.safe_load(path.read_text())
    if not isinstance(figures, dict) or not isinstance(figures.get("rows"), list) or "source" not in figures:
        raise InputError("not a figures file", file=path, where="report.paper_figures",
                         expected="keys source and rows (a list of per-arm figures)")
    return {**figures, "file": str(path)}


def run_figures(results_dir) -> dict:
    """This run's figures per arm, in the columns of PAPER_COLUMNS (missing ones absent)."""
    validation = Path(results_dir) / "validation"
    out = {arm: {} for arm in ARMS}
    read = {name: pd.read_csv(validation / name) for name in ("kid_selection.csv", "kid_ranking.csv", "centroid.csv")
            if (validation / name).is_file()}
    if "kid_selection.csv" in read:
        for row in read["kid_selection.csv"].itertuples():
            out.setdefault(row.arm, {}).update(acceptance=row.acceptance_rate,
                                               kid_gain=getattr(row, "pooled_relative_improvement", np.nan))
    if "kid_ranking.csv" in read:
        for row in read["kid_ranking.csv"].itertuples():
            out.setdefault(row.arm, {})[f"rho_{row.score}"] = row.spearman_rho
    if "centroid.csv" in read:
        for row in read["centroid.csv"][read["centroid.csv"]["metric"] == "z"].itertuples():
            out.setdefault(row.arm, {}).update(z_accepted=row.mean_accepted, z_random=row.mean_random)
    return out


def paper_section(results_dir, paper: dict | None) -> str:
    """This run's acceptance, ΔKID gain, ρ(T), ρ(R), ρ(F) and centroid z per arm, each beside the paper's row."""
    if not paper:
        return ""
    ours = run_figures(results_dir)
    rows = []
    for entry in paper["rows"]:
        arm = entry.get("arm", "all")
        mine = ours.get(arm, {})
        rows.append({"figures": "this run", "arm": arm, "setting": "", **_shown(mine)})
        rows.append({"figures": f"paper, {entry.get('tables', '')}", "arm": arm, "setting": entry.get("label", ""),
                     **_shown(entry)})
    body = table(pd.DataFrame(rows), row_class=lambda row: "" if row["figures"] == "this run" else "good")
    body += note(f"The paper's rows are its published numbers ({esc(paper['source'])}), copied into "
                 f"<code>{esc(paper.get('file', 'the figures file'))}</code>, not recomputed here. "
                 + esc(paper.get("caveat", "")))
    return section(
        "paper", "This run beside the paper's figures",
        "For each arm, this run's acceptance, ΔKID selection gain (pooled over conditions), Spearman ρ of mean T, R "
        "and F vs ΔKID over conditions, and the mean centroid z of accepted and random images, each followed by the "
        "paper's row for the same setting.",
        "figures of the same sign and order of magnitude as the paper's; differences are expected where the data, "
        "encoder or generator differ (named in the setting column).", body)


def _shown(figures: dict) -> dict:
    out = {}
    for key, label in PAPER_COLUMNS.items():
        value = figures.get(key)
        if isinstance(value, str) or value is None:
            out[label] = value if value is not None else "–"
        elif key in ("acceptance", "kid_gain"):
            out[label] = f"{100 * float(value):+.1f}%" if key == "kid_gain" and np.isfinite(value) else percent(value)
        else:
            out[label] = fmt(value)
    return out
