"""A picture of the ingested data: one composite site per cell type (rows) and siRNA (columns)."""

from __future__ import annotations

import textwrap
import pandas as pd

from ..images import composite_rgb, read_site
from ..io import atomic_path, read_json
from .demo import NEGATIVE_CONTROL_ID, SYNTHETIC_LABEL


def site_grid(sites_path, out_path, effects_path=None, max_columns: int = 14) -> pd.DataFrame:
    """Write a PNG grid of composites (rxrx1-utils colour map, `morphotrust.images.composite_rgb`).

    Columns: treatment siRNAs (the first `max_columns` - controls, by sirna_id), then the controls. The
    site shown for each cell is the first by experiment, plate, well and site. With `effects_path` (the
    demo's demo_effects.json) each column is labelled with the stains its phenotype acts on. Returns the
    sites shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = pd.read_parquet(sites_path)
    effects = read_json(effects_path)["sirnas"] if effects_path else {}
    synthetic = bool(sites["Metadata_synthetic"].any())
    wells = sites.drop_duplicates("Metadata_sirna_id")
    controls = wells[wells["Metadata_well_type"] != "treatment"].sort_values("Metadata_sirna_id")
    controls = controls.sort_values("Metadata_sirna_id", key=lambda s: s == NEGATIVE_CONTROL_ID, kind="stable")
    treatments = wells[wells["Metadata_well_type"] == "treatment"].sort_values("Metadata_sirna_id")
    treatments = treatments.head(max(0, max_columns - len(controls)))
    columns = pd.concat([treatments, controls])
    cell_types = sorted(sites["Metadata_cell_type"].unique())
    ordered = sites.sort_values(["Metadata_experiment", "Metadata_plate", "Metadata_well", "Metadata_site"])
    first = ordered.drop_duplicates(["Metadata_cell_type", "Metadata_sirna_id"]).set_index(
        ["Metadata_cell_type", "Metadata_sirna_id"])

    size = 1.45
    fig, axes = plt.subplots(len(cell_types), len(columns), squeeze=False,
                             figsize=(size * len(columns) + 0.6, size * len(cell_types) + 1.3))
    shown = []
    for i, cell_type in enumerate(cell_types):
        for j, column in enumerate(columns.itertuples()):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            key = (cell_type, column.Metadata_sirna_id)
            if key in first.index:
                site = first.loc[key]
                ax.imshow(composite_rgb(read_site(site["Metadata_image_path"])), interpolation="nearest")
                shown.append(site["Metadata_site_id"])
            else:
                ax.set_facecolor("0.85")
            if i == 0:
                label = textwrap.fill(str(column.Metadata_sirna), 18, break_on_hyphens=True)
                label += f"\nid {column.Metadata_sirna_id}"
                entry = effects.get(str(column.Metadata_sirna_id))
                if entry is not None:
                    label += ": " + (" ".join(entry["stains"]) if entry["effect"] else "no effect")
                ax.set_title(label, fontsize=6)
            if j == 0:
                ax.set_ylabel(cell_type, fontsize=8)
    title = SYNTHETIC_LABEL if synthetic else "RxRx1 sites"
    fig.suptitle(f"{title}: one site per cell type and siRNA", fontsize=10,
                 color="firebrick" if synthetic else "black", fontweight="bold")
    fig.tight_layout()
    with atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150, metadata={"Software": None})
    plt.close(fig)
    return first.reset_index()[lambda t: t["Metadata_site_id"].isin(shown)]
