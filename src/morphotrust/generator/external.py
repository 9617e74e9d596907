"""Bring your own generations: score images from any other model with the same stages.

Config `generated.external.folder` is a folder of images; `generated.external.manifest` a CSV with one row
per image and the columns

    path        relative to the folder, either a six-channel TIFF (`x.tif`/`x.tiff`, array (6, H, W) or
                (H, W, 6)) or a PNG-per-channel prefix `x` meaning `x_w1.png` ... `x_w6.png` (RxRx1 order:
                w1 nuclei, w2 ER, w3 actin, w4 nucleoli/RNA, w5 mitochondria, w6 Golgi/membrane)
    cell_type   the requested cell type (HEPG2, HUVEC, RPE, U2OS)
    sirna_id    the requested siRNA as RxRx1 sirna_id, or
    sirna       the requested siRNA by name (either column; if both are filled they must agree)

Images must be 8-bit (uint8, like the RxRx1 PNGs) and square. Everything is checked before anything is
written, and all problems are reported at once with their manifest line numbers: a path that leaves the
folder (absolute, `..`, or a symlink pointing outside), missing files, duplicate paths, a cell type or siRNA
absent from the real sites table, a cell type or siRNA without real fitting data of the trust score (the seen
arm's training split, `morphotrust.trust.fitting_vocabulary`: such a row could not be scored after its features
were extracted), a wrong number of channels, an unreadable image.

The arm of each requested condition: the arm the subset manifest gives it (i.e. its list in
config/conditions.yaml); otherwise `seen` if the condition has real training sites in the subset manifest,
else `unseen`. Images are box-filtered to the subset resolution and written as canonical (6, R, R) TIFFs
under `{out_dir}/images/`, with the generated manifest in `{out_dir}/manifest.parquet`.

The workflow tracks every file the manifest names in `results/inventory/external.tsv`
(`morphotrust.data.inventory.external_inventory`), an input of the `external` rule: replacing an image under
the same name reruns the conversion and everything that scores it.
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from tqdm import tqdm

from ..conditions import condition_key
from ..errors import InputError, InputErrors
from ..images import N_CHANNELS, resize_site, write_site
from ..io import write_parquet
from ..trust import fitting_vocabulary

TIFF_SUFFIXES = (".tif", ".tiff")


def files_of(path: str) -> list[str]:
    """The files one manifest `path` names, relative to the folder."""
    if path.lower().endswith(TIFF_SUFFIXES):
        return [path]
    return [f"{path}_w{c}.png" for c in range(1, N_CHANNELS + 1)]


def read_image(folder: Path, path: str) -> np.ndarray:
    """The `(6, H, W)` image a manifest `path` names; ValueError says what is wrong with it."""
    files = [folder / f for f in files_of(path)]
    if len(files) == 1:
        try:
            image = tifffile.imread(files[0])
        except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
            raise ValueError(f"unreadable TIFF ({error})") from None
        if image.ndim == 3 and image.shape[0] == N_CHANNELS:
            pass
        elif image.ndim == 3 and image.shape[-1] == N_CHANNELS:
            image = np.moveaxis(image, -1, 0)
        else:
            raise ValueError(f"shape {image.shape} is not 6 channels (expected (6, H, W) or (H, W, 6))")
    else:
        planes = []
        for file in files:
            try:
                with Image.open(file) as handle:
                    plane = np.asarray(handle)
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"unreadable PNG {file.name}: {error}") from None
            if plane.ndim != 2:
                raise ValueError(f"{file.name} has shape {plane.shape}: each channel PNG must be one grayscale "
                                 "channel")
            planes.append(plane)
        if len({p.shape for p in planes}) != 1:
            raise ValueError(f"channel PNGs differ in size: {[p.shape for p in planes]}")
        image = np.stack(planes)
    if image.dtype != np.uint8:
        raise ValueError(f"pixel type {image.dtype}; expected 8-bit (uint8) like the RxRx1 images")
    if image.shape[1] != image.shape[2]:
        raise ValueError(f"image is {image.shape[2]}x{image.shape[1]} pixels; expected a square image")
    return image


def _check_path(folder: Path, path: str) -> str | None:
    """Why `path` may not be used (None when fine): it must stay inside `folder` and its files exist."""
    if not path:
        return "empty path"
    pure = PurePosixPath(path)
    if pure.is_absolute() or Path(path).is_absolute():
        return f"path {path} is absolute (expected a path relative to the folder)"
    if ".." in pure.parts:
        return f"path {path} leaves the folder via '..'"
    if path.lower().endswith(".png"):
        return (f"path {path} names a single PNG (expected a six-channel TIFF or the prefix x of "
                "x_w1.png ... x_w6.png)")
    root = os.path.realpath(folder)
    missing = []
    for name in files_of(path):
        file = folder / name
        if not file.is_file():
            missing.append(name)
        elif os.path.commonpath([root, os.path.realpath(file)]) != root:
            return f"{name} is a link pointing outside the folder"
    if missing:
        return f"missing file(s): {', '.join(missing)}"
    return None


def _resolve_sirna(row: dict, sites: pd.DataFrame) -> tuple[int | None, str | None]:
    """(sirna_id, problem) for one manifest row."""
    by_name = dict(zip(sites["Metadata_sirna"].astype(str), sites["Metadata_sirna_id"].astype(int)))
    known_ids = set(by_name.values())
    sirna_id = name_id = None
    if row.get("sirna_id", ""):
        try:
            sirna_id = int(row["sirna_id"])
        except ValueError:
            return None, f"sirna_id `{row['sirna_id']}` is not a whole number"
        if sirna_id not in known_ids:
            return None, f"sirna_id {sirna_id} is not in the real sites table"
    if row.get("sirna", ""):
        name_id = by_name.get(row["sirna"])
        if name_id is None:
            close = difflib.get_close_matches(row["sirna"], list(by_name), n=3)
            return None, (f"siRNA `{row['sirna']}` is not in the real sites table"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if sirna_id is None and name_id is None:
        return None, "no siRNA given (fill sirna_id or sirna)"
    if sirna_id is not None and name_id is not None and sirna_id != name_id:
        return None, f"sirna `{row['sirna']}` is sirna_id {name_id}, but sirna_id says {sirna_id}"
    return (sirna_id if sirna_id is not None else name_id), None


def _not_fitted(what: str, value: str, fitted: dict) -> str:
    known = sorted(fitted, key=str)
    shown = ", ".join(map(str, known[:12])) + (", ..." if len(known) > 12 else "")
    return (f"{what} {value} has no real training sites of the seen arm, which the trust score is fitted on, so "
            f"it cannot be scored (expected one of {shown}; or list a condition with it as seen in "
            "config/conditions.yaml)")


def condition_arms(subset_manifest: pd.DataFrame) -> tuple[dict, set]:
    """({condition: listed arm}, {conditions with real training sites}) from the subset manifest."""
    listed = subset_manifest[subset_manifest["Metadata_arm"].isin(["seen", "unseen"])]
    arms = dict(zip(listed["Metadata_condition"], listed["Metadata_arm"]))
    trained = set(subset_manifest.loc[subset_manifest["Metadata_split"] == "train", "Metadata_condition"])
    return arms, trained


def validate_external(folder, manifest_path, sites: pd.DataFrame, subset_manifest: pd.DataFrame) -> pd.DataFrame:
    """Check the whole manifest and every image; return one row per image (requested condition, arm, ...).

    Raises InputErrors listing every problem with its manifest line (line 1 is the header).
    """
    folder, manifest_path = Path(folder), Path(manifest_path)
    if not folder.is_dir():
        raise InputError("folder of external generations not found", file=folder,
                         where="generated.external.folder", expected="an existing folder")
    try:
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the manifest CSV: {error}", file=manifest_path,
                         expected="a CSV with columns path, cell_type and sirna_id or sirna") from None
    table.columns = [c.strip() for c in table.columns]
    lacking = [c for c in ("path", "cell_type") if c not in table.columns]
    if "sirna_id" not in table.columns and "sirna" not in table.columns:
        lacking.append("sirna_id or sirna")
    if lacking:
        raise InputError(f"missing column(s): {', '.join(lacking)}", file=manifest_path, where="line 1",
                         expected="columns path, cell_type and sirna_id or sirna")
    if table.empty:
        raise InputError("the manifest lists no images", file=manifest_path, expected="one row per image")

    cell_types = set(sites["Metadata_cell_type"].astype(str))
    sirna_names = dict(zip(sites["Metadata_sirna_id"].astype(int), sites["Metadata_sirna"].astype(str)))
    arms, trained = condition_arms(subset_manifest)
    fitted = fitting_vocabulary(subset_manifest)
    problems, rows, first_line = [], [], {}
    for index, raw in enumerate(tqdm(table.to_dict("records"), desc="check external", unit="img",
                                     mininterval=5)):
        line = index + 2
        row = {k: str(v).strip() for k, v in raw.items()}
        row_problems = []
        path = row["path"]
        path_problem = _check_path(folder, path)
        if path_problem:
            row_problems.append(path_problem)
        else:
            key = os.path.normpath(path)
            if key in first_line:
                row_problems.append(f"path {path} is listed twice (first on line {first_line[key]})")
            first_line.setdefault(key, line)
        if row["cell_type"] not in cell_types:
            row_problems.append(f"cell type `{row['cell_type']}` is not in the real sites table "
                                f"(expected one of {', '.join(sorted(cell_types))})")
        elif row["cell_type"] not in fitted["cell_type"]:
            row_problems.append(_not_fitted("cell type", f"`{row['cell_type']}`", fitted["cell_type"]))
        sirna_id, sirna_problem = _resolve_sirna(row, sites)
        if sirna_problem:
            row_problems.append(sirna_problem)
        elif sirna_id not in fitted["sirna_id"]:
            row_problems.append(_not_fitted("siRNA", f"{sirna_id} ({sirna_names[sirna_id]})", fitted["sirna_id"]))
        if not path_problem:
            try:
                read_image(folder, path)
            except ValueError as error:
                row_problems.append(f"{path}: {error}")
        problems += [f"line {line}: {p}" for p in row_problems]
        if not row_problems:
            condition = condition_key(row["cell_type"], sirna_id)
            arm = arms.get(condition, "seen" if condition in trained else "unseen")
            rows.append({"line": line, "path": path, "cell_type": row["cell_type"], "sirna_id": sirna_id,
                         "sirna": sirna_names[sirna_id], "condition": condition, "arm": arm})
    if problems:
        raise InputErrors("external generations: the manifest has problems, nothing was converted", problems,
                          file=manifest_path)
    return pd.DataFrame(rows)


def convert_external(folder, manifest_path, sites_path, subset_manifest_path, resolution: int, out_dir) -> pd.DataFrame:
    """Validate, then write canonical `(6, R, R)` TIFFs and `out_dir/manifest.parquet`."""
    folder, out_dir = Path(folder), Path(out_dir)
    sites = pd.read_parquet(sites_path)
    subset_manifest = pd.read_parquet(subset_manifest_path)
    rows = validate_external(folder, manifest_path, sites, subset_manifest)
    ids, paths = [], []
    for row in tqdm(rows.itertuples(index=False), total=len(rows), desc="convert external", unit="img",
                    mininterval=5):
        sample_id = f"external-{row.line:06d}"
        path = out_dir / "images" / f"{sample_id}.tif"
        write_site(path, resize_site(read_image(folder, row.path), resolution))
        ids.append(sample_id)
        paths.append(str(path))
    table = pd.DataFrame({
        "Metadata_sample_id": ids,
        "Metadata_image_path": paths,
        "Metadata_cell_type": rows["cell_type"].to_numpy(),
        "Metadata_sirna_id": rows["sirna_id"].astype(int).to_numpy(),
        "Metadata_sirna": rows["sirna"].to_numpy(),
        "Metadata_condition": rows["condition"].to_numpy(),
        "Metadata_arm": rows["arm"].to_numpy(),
        "Metadata_source": "generated",
        "Metadata_generator": "external",
        "Metadata_external_path": rows["path"].to_numpy(),
        "Metadata_external_line": rows["line"].astype(int).to_numpy(),
    })
    write_parquet(table, out_dir / "manifest.parquet")
    arms = table["Metadata_arm"].value_counts()
    print(f"{len(table)} external images from {folder} -> {resolution} px; "
          + ", ".join(f"{arm} {n}" for arm, n in arms.items()))
    return table


def cli(argv: list[str]) -> None:
    """`morphotrust generator external ...`"""
    parser = argparse.ArgumentParser(prog="morphotrust generator external",
                                     description="Check and convert images from another generator.")
    parser.add_argument("--folder", required=True, help="folder holding the images")
    parser.add_argument("--manifest", required=True, help="CSV: path, cell_type, sirna_id or sirna")
    parser.add_argument("--sites", required=True, help="results/data/sites.parquet")
    parser.add_argument("--subsets-manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--resolution", type=int, required=True, help="subsets.resolution")
    parser.add_argument("--out-dir", required=True, help="results/generated/external")
    args = parser.parse_args(argv)
    convert_external(args.folder, args.manifest, args.sites, args.subsets_manifest, args.resolution, args.out_dir)
