"""The report's pictures, as PNG bytes (matplotlib, Agg; PIL for the site thumbnails)."""

from __future__ import annotations

import io
import string
import textwrap

import numpy as np
import pandas as pd

from ..images import composite_rgb
from .qc import FOCUS, SATURATION

ROWS = string.ascii_uppercase[:16]          # 384-well plate: rows A-P
COLUMNS = list(range(1, 25))                # columns 1-24
GROUP_COLOURS = {"real": "#23395d", "accepted": "#2e7d32", "abstained": "#d97706"}
ROLE_COLOURS = {
    "studied, seen arm": "#4a78c2",
    "studied, unseen arm": "#8e44ad",
    "same-plate control": "#3c9d5d",
    "ingested, not studied": "#d9dde3",
    "skipped at ingest (data QC)": "#c0392b",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def thumbnail_png(image: np.ndarray) -> bytes:
    """`(6, H, W)` site -> PNG of its RGB composite (the HTML scales it up, pixel by pixel)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(composite_rgb(image)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def well_position(well: str) -> tuple[int, int] | None:
    """`"B02"` -> (1, 1) (row index, column index on a 384-well plate); None if it is not such a name."""
    well = str(well).strip().upper()
    if len(well) < 2 or well[0] not in ROWS or not well[1:].isdigit() or not 1 <= int(well[1:]) <= 24:
        return None
    return ROWS.index(well[0]), int(well[1:]) - 1


def _plate_axes(ax, title: str):
    ax.set_xticks(range(24))
    ax.set_xticklabels([str(c) for c in COLUMNS], fontsize=8)
    ax.set_yticks(range(16))
    ax.set_yticklabels(list(ROWS), fontsize=8)
    ax.set_xticks(np.arange(-0.5, 24), minor=True)
    ax.set_yticks(np.arange(-0.5, 16), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.2)
    ax.tick_params(which="minor", length=0)
    ax.xaxis.tick_top()
    ax.set_xlim(-0.5, 23.5)
    ax.set_ylim(15.5, -0.5)
    ax.set_title(title, fontsize=11, loc="left", pad=22)


def plate_maps(roles: pd.Series, wells: pd.DataFrame, title: str) -> bytes:
    """Two 384-well maps: nuclei per site (mean over a well's measured sites) and what each well holds.

    `roles`: well name -> one of ROLE_COLOURS; `wells`: `qc.well_summary` rows.
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    # a colour-bar column beside both maps keeps them the same size and aligned
    fig, axes = plt.subplots(2, 2, figsize=(10, 12), gridspec_kw={"width_ratios": [40, 1]})
    (top, bar_axis), (bottom, spare) = axes
    spare.axis("off")
    present = np.zeros((16, 24), bool)
    for well in roles.index:
        pos = well_position(well)
        if pos:
            present[pos] = True
    counts = np.full((16, 24), np.nan)
    for row in wells.itertuples():
        pos = well_position(row.Metadata_well)
        if pos and np.isfinite(row.mean_nuclei):
            counts[pos] = row.mean_nuclei
    background = np.where(present, 0.85, 1.0)
    top.imshow(background, cmap="gray", vmin=0, vmax=1, aspect="equal")
    if np.isfinite(counts).any():
        image = top.imshow(np.ma.masked_invalid(counts), cmap="viridis", aspect="equal",
                           vmin=0, vmax=max(1.0, np.nanmax(counts)))
        fig.colorbar(image, cax=bar_axis).set_label("nuclei per site (mean)", fontsize=9)
        for (i, j), value in np.ndenumerate(counts):
            if np.isfinite(value):
                colour = "white" if value < 0.6 * np.nanmax(counts) else "black"
                top.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6.5, color=colour)
    else:
        bar_axis.axis("off")
    for row in wells.itertuples():
        pos = well_position(row.Metadata_well)
        if not pos:
            continue
        colour = "red" if row.sparse else "#ff8c00" if row.sites_blurred or row.sites_saturated else None
        if colour:
            top.add_patch(Rectangle((pos[1] - 0.44, pos[0] - 0.44), 0.88, 0.88, fill=False, edgecolor=colour,
                                    linewidth=3.0))
    _plate_axes(top, f"{title}: nuclei per site in each well (CellProfiler Image_Count_Nuclei)")
    top.legend(handles=[Patch(facecolor="#d9d9d9", label="site(s) ingested, not measured by CellProfiler"),
                        Patch(facecolor="white", edgecolor="#999", label="no site"),
                        Patch(fill=False, edgecolor="red", linewidth=2.5, label="sparse / empty well"),
                        Patch(fill=False, edgecolor="#ff8c00", linewidth=2.5, label="has a blurred or saturated site")],
               loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=4, fontsize=8, frameon=False)

    names = list(ROLE_COLOURS)
    codes = np.full((16, 24), np.nan)
    for well, role in roles.items():
        pos = well_position(well)
        if pos and role in ROLE_COLOURS:
            codes[pos] = names.index(role)
    bottom.imshow(np.ones((16, 24)), cmap="gray", vmin=0, vmax=1, aspect="equal")
    bottom.imshow(np.ma.masked_invalid(codes), cmap=ListedColormap([ROLE_COLOURS[n] for n in names]),
                  vmin=-0.5, vmax=len(names) - 0.5, aspect="equal")
    _plate_axes(bottom, f"{title}: what each well holds")
    bottom.legend(handles=[Patch(facecolor=ROLE_COLOURS[n], label=n) for n in names]
                  + [Patch(facecolor="white", edgecolor="#999", label="no site")],
                  loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return to_png(fig)


def _jitter(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.18, 0.18, n)


def feature_strips(groups: dict[str, dict[str, np.ndarray]], labels: dict[str, str]) -> bytes:
    """Small panels, one per feature: the values of each group (real / accepted / abstained) as dots."""
    plt = _plt()
    features = list(labels)
    ncols = min(4, len(features))
    nrows = int(np.ceil(len(features) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.5 * nrows), squeeze=False)
    names = list(groups)
    for k, feature in enumerate(features):
        ax = axes.flat[k]
        for g, name in enumerate(names):
            values = np.asarray(groups[name].get(feature, []), float)
            values = values[np.isfinite(values)]
            y = np.full(len(values), len(names) - 1 - g) + _jitter(len(values), k * 10 + g)
            ax.scatter(values, y, s=14, alpha=0.75, color=GROUP_COLOURS.get(name.split()[-1], "#555"),
                       edgecolors="none")
            if len(values):
                ax.plot([np.median(values)] * 2, [len(names) - 1 - g - 0.3, len(names) - 1 - g + 0.3],
                        color="black", linewidth=1.6)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{n} (n={np.isfinite(np.asarray(groups[n].get(feature, []), float)).sum()})"
                            for n in reversed(names)], fontsize=7.5)
        ax.set_title("\n".join(textwrap.wrap(labels[feature], 30)), fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.set_ylim(-0.6, len(names) - 0.4)
    for ax in list(axes.flat)[len(features):]:
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def trust_strips(generated: pd.DataFrame, real: pd.DataFrame | None, threshold: float | None) -> bytes:
    """Per condition (rows): T of real calibration sites (grey), accepted (green) and abstained (orange) samples."""
    plt = _plt()
    conditions = sorted(generated["Metadata_condition"].astype(str).unique(),
                        key=lambda c: (generated.loc[generated["Metadata_condition"] == c, "Metadata_arm"].iloc[0], c))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(conditions)))
    for i, condition in enumerate(conditions):
        y = len(conditions) - 1 - i
        rows = generated[generated["Metadata_condition"] == condition]
        if real is not None:
            values = real.loc[real["Metadata_condition"] == condition, "T"].to_numpy(float)
            ax.scatter(values, y + 0.22 + _jitter(len(values), i) * 0.4, s=12, color="#8a8f98", alpha=0.8,
                       edgecolors="none", label="real (calibration)" if i == 0 else None)
        for name in ("accepted", "abstained"):
            chosen = rows["accepted"].astype(bool) == (name == "accepted")
            values = rows.loc[chosen, "T"].to_numpy(float)
            ax.scatter(values, y - 0.12 + _jitter(len(values), 100 + i) * 0.5, s=16, color=GROUP_COLOURS[name],
                       alpha=0.85, edgecolors="none", label=f"generated, {name}" if i == 0 else None)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold κ = {threshold:.3g}")
    arms = generated.drop_duplicates("Metadata_condition").set_index("Metadata_condition")["Metadata_arm"]
    ax.set_yticks(range(len(conditions)))
    ax.set_yticklabels([f"{c} ({arms[c]})" for c in reversed(conditions)], fontsize=8)
    ax.set_xlabel("trust score T = R + F (lower = more trustworthy)")
    ax.set_ylim(-0.7, len(conditions) - 0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    return to_png(fig)


def trust_rank_curve(per_sample: pd.DataFrame, max_bins: int = 10) -> bytes:
    """Mean centroid distance z per within-condition trust bin (1 = most trusted), per condition and pooled.

    Deciles when conditions have at least 10 scored samples, otherwise as many bins as a typical condition has.
    """
    plt = _plt()
    table = per_sample[np.isfinite(per_sample["z"].to_numpy(float))].copy()
    table["rank"] = table.groupby("condition")["T"].rank(method="first") - 1
    table["n"] = table.groupby("condition")["T"].transform("size")
    n_bins = int(max(1, min(max_bins, table.groupby("condition").size().median())))
    table["bin"] = (table["rank"] * n_bins // table["n"]).astype(int) + 1
    fig, ax = plt.subplots(figsize=(7.5, 4))
    curves = [rows.groupby("bin")["z"].mean() for _, rows in table.groupby("condition")]
    for means in curves:
        ax.plot(means.index, means.to_numpy(), color="#9aa3b0", linewidth=0.9, alpha=0.8, marker="o", markersize=2.5)
    pooled = table.groupby("bin")["z"].mean()
    ax.plot(pooled.index, pooled.to_numpy(), color="#23395d", linewidth=2.4, marker="o",
            label="all conditions shown (mean)")
    ax.plot([], [], color="#9aa3b0", linewidth=0.9, label="one condition")
    ax.axhline(0, color="#2e7d32", linestyle="--", linewidth=1, label="z = 0: as far as real cells are from each other")
    values = np.concatenate([c.to_numpy() for c in curves] + [pooled.to_numpy()])
    top = np.quantile(values, 0.95) if len(values) > 20 else values.max()
    if values.max() > 1.5 * top > 0:  # a few extreme conditions would flatten every other curve
        ax.set_ylim(min(0.0, values.min()) - 0.05 * top, 1.1 * top)
        ax.set_title(f"{int((values > 1.1 * top).sum())} point(s) above the top edge", fontsize=8)
    name = "decile" if n_bins == 10 else f"bin (of {n_bins})"
    ax.set_xlabel(f"trust {name} within the condition (1 = most trusted)")
    ax.set_ylabel("centroid distance z")
    ax.set_xticks(range(1, n_bins + 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def condition_maps(real: pd.DataFrame | None, generated: pd.DataFrame | None, column: str, label: str) -> bytes:
    """Cell types (rows) x siRNAs (columns): mean `column` of real and of generated sites, on one colour scale."""
    plt = _plt()
    panels = [(name, t) for name, t in (("real", real), ("generated", generated)) if t is not None and len(t)]
    cell_types = sorted(set().union(*[set(t["Metadata_cell_type"].astype(str)) for _, t in panels]))
    sirnas = sorted(set().union(*[set(t["Metadata_sirna_id"].astype(int)) for _, t in panels]))
    grids = []
    for name, t in panels:
        means = t.groupby([t["Metadata_cell_type"].astype(str), t["Metadata_sirna_id"].astype(int)])[column].mean()
        grid = np.full((len(cell_types), len(sirnas)), np.nan)
        for (c, s), v in means.items():
            grid[cell_types.index(c), sirnas.index(s)] = v
        grids.append((name, grid))
    values = np.concatenate([g.ravel() for _, g in grids])
    vmax = np.nanmax(values) if np.isfinite(values).any() else 1.0
    size = (4 + 0.5 * len(sirnas) * len(grids), 1.6 + 0.45 * len(cell_types))
    fig, axes = plt.subplots(1, len(grids), figsize=size, squeeze=False)
    for ax, (name, grid) in zip(axes.flat, grids):
        ax.imshow(np.ones_like(grid), cmap="gray", vmin=0, vmax=1.2)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.0f}", ha="center", va="center", fontsize=7.5,
                    color="black" if not np.isfinite(v) or v > 0.6 * vmax else "white")
        ax.set_xticks(range(len(sirnas)))
        ax.set_xticklabels([str(s) for s in sirnas], fontsize=7.5, rotation=90 if len(sirnas) > 12 else 0)
        ax.set_yticks(range(len(cell_types)))
        ax.set_yticklabels(cell_types, fontsize=8)
        ax.set_xlabel("siRNA id", fontsize=8)
        ax.set_title("real sites" if name == "real" else "generated images", fontsize=10)
    fig.colorbar(image, ax=list(axes.flat), fraction=0.03, pad=0.02).set_label(label, fontsize=8)
    return to_png(fig)


def acceptance_bars(summary: pd.DataFrame, min_acceptance: float | None) -> bytes:
    """Acceptance rate per condition (bars), coloured by arm."""
    plt = _plt()
    table = summary.sort_values(["Metadata_arm", "Metadata_condition"])
    colours = {"seen": "#4a78c2", "unseen": "#8e44ad"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(table) + 2), 3.8))
    x = np.arange(len(table))
    ax.bar(x, table["acceptance_rate"].to_numpy(float), color=[colours.get(a, "#888") for a in table["Metadata_arm"]])
    if min_acceptance is not None:
        ax.axhline(min_acceptance, color="black", linestyle="--", linewidth=1,
                   label=f"trusted from {100 * min_acceptance:.0f}% accepted")
    ax.set_xticks(x)
    ax.set_xticklabels(table["Metadata_condition"], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of generated samples accepted")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=f"{a} arm") for a, c in colours.items() if a in set(table["Metadata_arm"])]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    return to_png(fig)


def qc_strips(groups: dict[str, pd.DataFrame], reference: pd.DataFrame | None, qc: dict, stains) -> bytes:
    """Per stain: focus (left) and saturation (right) of every site, rule limits in red, flagged sites red.

    Focus is drawn relative to the median of real sites of the same cell type when the relative blur rule is on
    (so one limit line serves every cell type), else as the raw slope with the absolute limit.
    """
    plt = _plt()
    relative = qc["blur_drop"] is not None and reference is not None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    names = list(groups)
    colours = ["#23395d", "#d97706", "#2e7d32"]
    width = 0.7 / max(1, len(names))
    for g, name in enumerate(names):
        frame = groups[name]
        for s, stain in enumerate(stains):
            x0 = s - 0.35 + width * (g + 0.5)
            focus = FOCUS.format(stain)
            if focus in frame.columns and frame[focus].notna().any():
                values = frame[focus].to_numpy(float)
                if relative and stain in reference.columns:
                    values = values - reference[stain].reindex(frame["Metadata_cell_type"].astype(str)).to_numpy(float)
                bad = np.zeros(len(values), bool)
                if relative:
                    bad |= values < -qc["blur_drop"]
                elif qc["blur_min_slope"] is not None:
                    bad |= values < qc["blur_min_slope"]
                x = x0 + _jitter(len(values), s * 7 + g) * width * 1.5
                left.scatter(x[~bad], values[~bad], s=9, color=colours[g % 3], alpha=0.7, edgecolors="none",
                             label=name if s == 0 else None)
                left.scatter(x[bad], values[bad], s=16, color="red", marker="x",
                             label="flagged" if s == 0 and g == 0 else None)
            saturation = SATURATION.format(stain)
            if saturation in frame.columns and frame[saturation].notna().any():
                values = frame[saturation].to_numpy(float)
                bad = values > qc["saturation_max_percent"]
                x = x0 + _jitter(len(values), s * 11 + g) * width * 1.5
                right.scatter(x[~bad], values[~bad], s=9, color=colours[g % 3], alpha=0.7, edgecolors="none",
                              label=name if s == 0 else None)
                right.scatter(x[bad], values[bad], s=16, color="red", marker="x")
    if relative:
        left.axhline(-qc["blur_drop"], color="red", linestyle="--", linewidth=1,
                     label=f"blur limit: {qc['blur_drop']:g} below the real median")
        left.set_ylabel("focus slope minus the median of\nreal sites of the same cell type", fontsize=8.5)
    else:
        if qc["blur_min_slope"] is not None:
            left.axhline(qc["blur_min_slope"], color="red", linestyle="--", linewidth=1,
                         label=f"blur limit {qc['blur_min_slope']:g}")
        left.set_ylabel("focus slope (PowerLogLogSlope)", fontsize=8.5)
    right.axhline(qc["saturation_max_percent"], color="red", linestyle="--", linewidth=1,
                  label=f"saturation limit {qc['saturation_max_percent']:g}%")
    right.set_ylabel("% of pixels at the maximum", fontsize=8.5)
    right.set_ylim(bottom=0)
    for ax, title in ((left, "Focus per stain (lower = blurrier)"), (right, "Saturation per stain")):
        ax.set_xticks(range(len(stains)))
        ax.set_xticklabels(stains, fontsize=8.5)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7.5, loc="best")
    fig.tight_layout()
    return to_png(fig)
