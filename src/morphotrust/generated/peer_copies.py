"""Real held-out sites written as other generators write their images: the known-answer check of the external path.

Each studied evaluation site is written twice in a peer's format (morphotrust.generated.layouts.PRESETS): once
requested under its own condition (`copy`) and once under another studied siRNA of the same cell type
(`wrong_label`), chosen as the demo stand-ins choose it (morphotrust.generated.standins.plan_standins). Scored
through generated.source external, the copies should be accepted like the same sites written as native TIFFs
and the wrong labels rejected like theirs (BENCHMARKS.md, tests/test_external_formats.py). Not a generator.

Formats: `tiff` (the native form: a six-channel uint8 TIFF per image, manifest layout), `sit` (float [0, 1]
tensors named by vocabulary indices), `morphodiff` (rxrx1_rgb PNG composites), `cellflux` (cellflux_rgb PNG
composites of 96-px crops), `impa` ((96, 96, 6) float arrays in [-1, 1]). The presets without a cell type in
their names get one folder level per cell type (`{cell_type}/` + the preset's pattern), as if each cell type's
model had written into its own folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from ..images import composite_of, read_site
from ..io import atomic_path, write_csv
from .layouts import PRESETS
from .standins import plan_standins

FORMATS = ("tiff", *PRESETS)
KINDS = ("copy", "wrong_label")
CROP_PX = 96


def _save(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as tmp:
        write(tmp)


def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = min(CROP_PX, image.shape[1])
    top, left = rng.integers(0, image.shape[1] - size + 1, size=2)
    return image[:, top:top + size, left:left + size]


def write_copy(image: np.ndarray, fmt: str, path: Path, rng: np.random.Generator) -> None:
    """One native `(6, H, W)` uint8 site written as format `fmt` writes an image."""
    if fmt == "tiff":
        _save(path, lambda tmp: tifffile.imwrite(tmp, image, photometric="minisblack"))
    elif fmt == "sit":
        import torch

        tensor = torch.from_numpy(image.astype(np.float32) / 255.0)
        _save(path, lambda tmp: torch.save(tensor, tmp))
    elif fmt in ("morphodiff", "cellflux"):
        site = _crop(image, rng) if fmt == "cellflux" else image
        rgb = composite_of(site, PRESETS[fmt]["channels"]).transpose(1, 2, 0)
        _save(path, lambda tmp: Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(tmp, format="PNG"))
    elif fmt == "impa":
        array = np.moveaxis(_crop(image, rng), 0, -1).astype(np.float32) / 127.5 - 1.0
        _save(path, lambda tmp: np.save(tmp, array))
    else:
        raise ValueError(f"unknown format {fmt} (expected one of {', '.join(FORMATS)})")


def write_peer_copies(manifest: pd.DataFrame, fmt: str, folder, seed: int = 0,
                      max_sites_per_condition: int = 8) -> tuple[pd.DataFrame, dict]:
    """Write the copies of `fmt` under `folder`; return (one row per file: kind, site, true and requested condition,
    path) and the generated.external config that reads them."""
    folder = Path(folder)
    plan = plan_standins(manifest, {"seed": seed, "max_sites_per_condition": max_sites_per_condition})
    plan = plan[plan["kind"].isin(KINDS)].reset_index(drop=True)
    paths = manifest.set_index("Metadata_site_id")["Metadata_image_path"]
    cell_types = sorted(manifest["Metadata_cell_type"].unique())
    sirna_ids = sorted(int(v) for v in manifest["Metadata_sirna_id"].unique())
    rng = np.random.default_rng(seed)
    files = []
    for number, row in enumerate(plan.itertuples(index=False)):
        name = f"{row.kind}-{row.site_id}"
        sirna = str(row.Metadata_sirna)
        if fmt == "tiff":
            relative = f"{name}.tif"
        elif fmt == "sit":
            relative = (f"images/cell{cell_types.index(row.Metadata_cell_type)}_sirna"
                        f"{sirna_ids.index(int(row.Metadata_sirna_id))}_{number}.pt")
        elif fmt == "morphodiff":
            relative = f"{row.Metadata_cell_type}/{sirna}/{sirna}-generated-{number}.png"
        elif fmt == "cellflux":
            relative = f"{row.Metadata_cell_type}/fid_samples/epoch-0/{sirna}/{name}.png"
        else:
            relative = f"{row.Metadata_cell_type}/{sirna}/{name}.npy"
        write_copy(read_site(paths[row.site_id]), fmt, folder / relative, rng)
        files.append(relative)
    table = plan.assign(path=files)
    external = {"folder": str(folder), "layout": "manifest" if fmt == "tiff" else fmt}
    if fmt == "tiff":
        manifest_csv = folder / "manifest.csv"
        write_csv(pd.DataFrame({"path": table["path"], "cell_type": table["Metadata_cell_type"],
                                "sirna_id": table["Metadata_sirna_id"]}), manifest_csv)
        external["manifest"] = str(manifest_csv)
    elif fmt == "sit":
        external["vocabulary"] = {"cell_type": cell_types, "sirna": sirna_ids}
    else:
        external["pattern"] = "{cell_type}/" + PRESETS[fmt]["pattern"]
    return table, external
