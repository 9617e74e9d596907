"""Bring your own generations: score images from any other model with the same stages.

`generated.external.folder` holds the images; `generated.external.layout` says which images they are and what
each was asked for (morphotrust.generated.layouts: a CSV `manifest`, a file-name `pattern`, or a peer's preset:
`sit`, `morphodiff`, `cellflux`, `impa`); the file formats and value ranges are those of
morphotrust.generated.formats (`.pt` tensors, `.npy`/`.npz`, TIFF and PNG of any pixel type, the six channel PNGs
of RxRx1; (C, H, W) or (H, W, C)).

Everything is checked before anything is written, and all problems are reported at once by manifest line or
file path: a path that leaves the folder (absolute, `..`, or a symlink pointing outside), missing files,
duplicate paths, an unreadable file, a wrong number of channels, a non-square image, a cell type or siRNA absent
from the real data, one without real fitting data of the trust score (the seen arm's training split,
`morphotrust.trust.fitting_vocabulary`), one outside the generator's declared vocabulary, an index without a
vocabulary entry, no image at all. `snakemake -n` runs the same checks on the file headers
(`check_external(..., pixels=False)`, against the metadata and conditions file); the job adds the pixel checks:
the value range (declared or `auto`) and the scale guard (morphotrust.generated.formats).

Channels (`generated.external.channels`): `six` (the six stains, the default) or, for a generator that writes only
RGB composites, the mapping from six stains to its three channels (`rxrx1_rgb`, `cellflux_rgb` or a 3x6
matrix; morphotrust.images.composite_of). A composite image is judged as it is, `(3, R, R)`, against real sites
passed through the same mapping (`build_reference`): splitting it back into six stains would be a guess.

Resolution and crops: images are judged at `generated.external.resolution` (null: subsets.resolution), box-filtered
there. `crop_px` says that each image shows a square crop of that many native pixels of a site (CellFlux / IMPA
style); the real reference is then one crop of that size per real site (seeded position), brought to the same
resolution. Whenever the mapping, resolution or crop differ from the subset stacks, the real reference is rebuilt
from the native sites (`results/generated/external/reference/{split}.npy`) and the features of real sites are
computed on it; `judging.json` says in words what was compared and what detail was lost, for the run summary.

The arm of each requested condition: the arm the subset manifest gives it (i.e. its list in
config/conditions.yaml); otherwise `seen` if the condition has real training sites in the subset manifest,
else `unseen`. The workflow tracks every image file in `results/inventory/external.tsv`
(`morphotrust.data.inventory.external_inventory`), an input of the `external` rule: replacing an image under
the same name reruns the conversion and everything that scores it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..subsets.conditions import condition_key
from ..errors import InputError, InputErrors
from ..images import IMAGE_PROBLEM, composite_of, nonfinite_problem, read_site, resize_site, write_site
from ..io import atomic_path, write_json, write_parquet
from . import formats
from .layouts import Entry, ExternalSettings, entries_of

files_of = formats.files_of


def _check_path(folder: Path, path: str) -> str | None:
    """Why `path` may not be used (None when fine): it must stay inside `folder` and its files exist."""
    if not path:
        return "empty path"
    pure = PurePosixPath(path)
    if pure.is_absolute() or Path(path).is_absolute():
        return f"path {path} is absolute (expected a path relative to the folder)"
    if ".." in pure.parts:
        return f"path {path} leaves the folder via '..'"
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


class Known:
    """The values a requested condition may take: RxRx1's (the real data) and the trust score's fitted ones."""

    def __init__(self, cell_types, sirna_names: dict, fitted: dict):
        self.cell_types = set(map(str, cell_types))
        self.names = {int(k): str(v) for k, v in sirna_names.items()}  # sirna_id -> name
        self.ids = {v: k for k, v in self.names.items()}
        self.fitted = fitted

    @classmethod
    def from_tables(cls, sites: pd.DataFrame, subset_manifest: pd.DataFrame) -> "Known":
        """From the sites table and the subset manifest (what the job has)."""
        from ..trust import fitting_vocabulary  # here: the workflow's plan (check_planned) need not import it

        return cls(sites["Metadata_cell_type"].unique(),
                   dict(zip(sites["Metadata_sirna_id"].astype(int), sites["Metadata_sirna"].astype(str))),
                   fitting_vocabulary(subset_manifest))

    @classmethod
    def from_plan(cls, metadata: pd.DataFrame, conditions: pd.DataFrame) -> "Known":
        """From the planned metadata and the checked conditions (what `snakemake -n` has): every seen condition
        has training sites, so its values are the ones the trust score is fitted on."""
        seen = conditions[conditions["arm"] == "seen"]
        fitted = {"cell_type": {str(v): 1 for v in seen["cell_type"]},
                  "sirna_id": {int(v): 1 for v in seen["sirna_id"]}}
        return cls(metadata["cell_type"].unique(),
                   dict(zip(metadata["sirna_id"].astype(int), metadata["sirna"].astype(str))), fitted)


def _not_fitted(what: str, value: str, fitted: dict) -> str:
    known = sorted(fitted, key=str)
    shown = ", ".join(map(str, known[:12])) + (", ..." if len(known) > 12 else "")
    return (f"{what} {value} has no real training sites of the seen arm, which the trust score is fitted on, so "
            f"it cannot be scored (expected one of {shown}; or list a condition with it as seen in "
            "config/conditions.yaml)")


def _requested(values: dict, field: str, vocabulary: list | None, plain: str) -> tuple[str | None, str | None]:
    """(value as written, problem): an index `field` through the generator's vocabulary, else the `plain` field."""
    if field not in values:
        return values.get(plain, ""), None
    index = int(values[field])
    if vocabulary is None or not 0 <= index < len(vocabulary):
        size = 0 if vocabulary is None else len(vocabulary)
        return None, f"{field} {index} is not in generated.external.vocabulary ({size} entries, index 0 first)"
    return str(vocabulary[index]).strip(), None


def _resolve_cell_type(values: dict, settings: ExternalSettings, known: Known) -> tuple[str | None, list]:
    vocabulary = settings.vocabulary.get("cell_type")
    cell_type, problem = _requested(values, "cell_type_index", vocabulary, "cell_type")
    if problem:
        return None, [problem]
    if cell_type not in known.cell_types:
        return None, [f"cell type `{cell_type}` is not in the real data (expected one of "
                      f"{', '.join(sorted(known.cell_types))})"]
    if vocabulary is not None and "cell_type_index" not in values and cell_type not in map(str, vocabulary):
        return None, [f"cell type `{cell_type}` is valid, but not in the generator's declared training vocabulary "
                      "(generated.external.vocabulary.cell_type): a mislabelled image?"]
    if cell_type not in known.fitted["cell_type"]:
        return None, [_not_fitted("cell type", f"`{cell_type}`", known.fitted["cell_type"])]
    return cell_type, []


def _sirna_of(text: str, known: Known, by: str) -> tuple[int | None, str | None]:
    """sirna_id of an RxRx1 id (`by` sirna_id) or name (`by` sirna)."""
    if by == "sirna_id":
        try:
            sirna_id = int(text)
        except ValueError:
            return None, f"sirna_id `{text}` is not a whole number"
        if sirna_id not in known.names:
            return None, f"sirna_id {sirna_id} is not in the real data"
        return sirna_id, None
    if text not in known.ids:
        close = difflib.get_close_matches(text, list(known.ids), n=3)
        return None, (f"siRNA `{text}` is not in the real data"
                      + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return known.ids[text], None


def _resolve_sirna(values: dict, settings: ExternalSettings, known: Known) -> tuple[int | None, list]:
    vocabulary = settings.vocabulary.get("sirna")
    if "sirna_index" in values:
        text, problem = _requested(values, "sirna_index", vocabulary, "sirna")
        if problem:
            return None, [problem]
        # a vocabulary entry of digits is an RxRx1 sirna_id, anything else a name
        sirna_id, problem = _sirna_of(text, known, "sirna_id" if text.isdigit() else "sirna")
    else:
        ids = {by: _sirna_of(values[by], known, by) for by in ("sirna_id", "sirna") if values.get(by, "")}
        if not ids:
            return None, ["no siRNA given (fill sirna_id or sirna)"]
        problems = [p for _, p in ids.values() if p]
        if problems:
            return None, problems
        found = {i for i, _ in ids.values()}
        if len(found) > 1:
            return None, [f"sirna `{values['sirna']}` is sirna_id {ids['sirna'][0]}, but sirna_id says "
                          f"{ids['sirna_id'][0]}"]
        sirna_id, problem = found.pop(), None
        if vocabulary is not None and not {str(sirna_id), known.names[sirna_id]} & {str(v) for v in vocabulary}:
            problem = (f"siRNA {sirna_id} ({known.names[sirna_id]}) is valid, but not in the generator's declared "
                       "training vocabulary (generated.external.vocabulary.sirna): a mislabelled image, or an "
                       "index of the generator's own taken for an RxRx1 id?")
    if problem:
        return None, [problem]
    if sirna_id not in known.fitted["sirna_id"]:
        return None, [_not_fitted("siRNA", f"{sirna_id} ({known.names[sirna_id]})", known.fitted["sirna_id"])]
    return sirna_id, []


def _where(settings: ExternalSettings):
    return settings.manifest if settings.layout == "manifest" else settings.folder


def _entries(settings: ExternalSettings) -> list[Entry]:
    folder = Path(settings.folder or "")
    if not settings.folder or not folder.is_dir():
        raise InputError("folder of external generations not found", file=folder,
                         where="generated.external.folder", expected="an existing folder")
    try:
        return entries_of(settings)
    except ValueError as error:
        raise InputError(str(error), file=settings.manifest,
                         expected="a CSV with columns path, cell_type and sirna_id or sirna") from None


def check_external(settings: ExternalSettings, known: Known, pixels: bool = True) -> tuple[pd.DataFrame, str]:
    """Check every image the settings name; return (one row per image: where, path, requested condition,
    shape, and with `pixels` the value extremes), the set's value range).

    With `pixels=False` only file headers are read (what `snakemake -n` does). Raises InputErrors listing every
    problem by manifest line or path.
    """
    folder = Path(settings.folder or "")
    entries = _entries(settings)
    if not entries:
        if settings.layout == "manifest":
            raise InputError("the manifest lists no images", file=settings.manifest, expected="one row per image")
        raise InputError(f"no file under the folder matches the pattern {settings.pattern}", file=folder,
                         where=f"generated.external.layout {settings.layout}",
                         expected="image files named like the pattern (hidden files are skipped)")
    problems, rows, first = [], [], {}
    for entry in tqdm(entries, desc="check external", unit="img", mininterval=5):
        row_problems = []
        path_problem = _check_path(folder, entry.path)
        if path_problem:
            row_problems.append(path_problem)
        else:
            key = os.path.normpath(entry.path)
            if key in first:
                row_problems.append(f"path {entry.path} is listed twice (first on {first[key]})")
            first.setdefault(key, entry.where)
        cell_type, cell_problems = _resolve_cell_type(entry.values, settings, known)
        sirna_id, sirna_problems = _resolve_sirna(entry.values, settings, known)
        row_problems += cell_problems + sirna_problems
        shape = seen = None
        degenerate = {}
        if not path_problem:
            try:
                if pixels:
                    raw = formats.read_raw(folder, entry.path, settings.image_channels)
                    shape, seen = raw.shape, formats.extremes(raw)
                    candidates = formats.VALUE_RANGES if settings.value_range == formats.AUTO \
                        else [settings.value_range]
                    degenerate = {r: formats.degenerate(formats.to_uint8(raw, r)) for r in candidates}
                else:
                    shape, _ = formats.check_header(folder, entry.path, settings.image_channels)
                if shape[1] != shape[2]:
                    raise ValueError(f"image is {shape[2]}x{shape[1]} pixels; expected a square image")
            except ValueError as error:
                row_problems.append(f"{entry.path}: {error}" if entry.where != entry.path else str(error))
        problems += [f"{entry.where}: {p}" for p in row_problems]
        if not row_problems:
            rows.append({"where": entry.where, "path": entry.path, "cell_type": cell_type, "sirna_id": sirna_id,
                         "sirna": known.names[sirna_id], "size": int(shape[1]), "extremes": seen,
                         "degenerate": degenerate})
    value_range = settings.value_range
    if pixels and not problems:
        try:
            value_range = formats.resolve_range(settings.value_range, [r["extremes"] for r in rows])
        except ValueError as error:
            problems.append(f"generated.external.value_range {settings.value_range}: {error}")
        else:
            for row in rows:
                reason = formats.out_of_range(value_range, row["extremes"])
                if reason:
                    problems.append(f"{row['where']}: {reason}")
            flat = formats.degenerate_set_problem(sum(r["degenerate"][value_range] for r in rows), len(rows),
                                                  value_range)
            if flat and not problems:
                problems.append(flat)
    if problems:
        what = "the manifest has problems" if settings.layout == "manifest" else "the images have problems"
        raise InputErrors(f"external generations ({settings.layout} layout): {what}, nothing was converted",
                          problems, file=_where(settings))
    return pd.DataFrame(rows), value_range


def check_planned(config: dict, settings: ExternalSettings, metadata: pd.DataFrame, conditions: pd.DataFrame) -> None:
    """At the workflow's plan (also `snakemake -n`), when generated.source is external: every manifest / pattern
    problem (missing or unreadable files, wrong shapes, unknown values, an empty set) by line or path, from the
    file headers (the job checks the pixels). Raises InputErrors; nothing for another source."""
    if config["generated"]["source"] == "external":
        check_external(settings, Known.from_plan(metadata, conditions), pixels=False)


def condition_arms(subset_manifest: pd.DataFrame) -> tuple[dict, set]:
    """({condition: listed arm}, {conditions with real training sites}) from the subset manifest."""
    listed = subset_manifest[subset_manifest["Metadata_arm"].isin(["seen", "unseen"])]
    arms = dict(zip(listed["Metadata_condition"], listed["Metadata_arm"]))
    trained = set(subset_manifest.loc[subset_manifest["Metadata_split"] == "train", "Metadata_condition"])
    return arms, trained




def read_external(folder, path: str, settings: ExternalSettings, value_range: str) -> tuple[np.ndarray, str]:
    """One checked image in the workflow's form: `(C, R, R)` uint8 at the judging resolution, and
    `images.nonfinite_problem` of the file's pixels (NaN or infinite ones are stored as 0)."""
    raw = formats.read_raw(folder, path, settings.image_channels)
    return resize_site(formats.to_uint8(raw, value_range), settings.resolution), nonfinite_problem(raw)


def judging_notes(settings: ExternalSettings, external_sizes, native_px: int, subsets_resolution: int) -> dict:
    """What was compared with what, in words, for the run summary (and judging.json)."""
    sizes = sorted({int(s) for s in external_sizes})
    shown = "/".join(map(str, sizes))
    notes = {"layout": settings.layout, "channels": settings.channels, "value_range": settings.value_range,
             "resolution_px": settings.resolution, "crop_px": settings.crop_px, "external_sizes_px": sizes,
             "real_native_px": native_px, "derived_reference": settings.derived_reference(subsets_resolution),
             "sentences": []}
    sentences = notes["sentences"]
    if sizes and max(sizes) > settings.resolution:
        sentences.append(f"The external images ({shown} px) are judged at {settings.resolution} px "
                         f"(generated.external.resolution): detail finer than about "
                         f"{max(sizes) / settings.resolution:.1f} of their pixels is averaged away and not judged.")
    elif sizes and min(sizes) < settings.resolution:
        sentences.append(f"The external images ({shown} px) are enlarged to {settings.resolution} px: they cannot "
                         "show detail finer than their own pixels.")
    region = (f"one {settings.crop_px}-px crop (native pixels, seeded position) of each real site"
              if settings.crop_px else "the real sites")
    real_px = settings.crop_px or native_px
    if real_px > settings.resolution:
        sentences.append(f"The real reference is {region}, brought from {real_px} px to {settings.resolution} px "
                         "like the external images.")
    elif settings.crop_px:
        sentences.append(f"The real reference is {region}, at {settings.resolution} px.")
    if settings.composite:
        mapping = settings.channels if isinstance(settings.channels, str) else "the configured 3x6 matrix"
        sentences.append(f"Composite mode ({mapping}): generated and real images are compared as the same three "
                         "mixed channels, so the trust score judges overall realism and the cell-type and siRNA "
                         "signal that survives the mixing, but not the six stains one by one: a defect of one "
                         "stain that the mixing hides, or stains swapped within one colour, cannot be seen.")
    notes["cellprofiler"] = "measured" if settings.cellprofiler_applicable else (
        "not applicable: CellProfiler's pipeline segments nuclei and cells on the six stains of whole sites, and "
        + ("composite channels mix the stains" if settings.composite else f"the images are {settings.crop_px}-px "
           "crops, not whole sites") + "; the validation uses the encoder features only")
    if not settings.cellprofiler_applicable:
        sentences.append("CellProfiler validation is " + notes["cellprofiler"] + ".")
    return notes


def convert_external(settings: ExternalSettings, sites_path, subset_manifest_path, out_dir,
                     native_px: int | None = None, subsets_resolution: int | None = None) -> pd.DataFrame:
    """Check, then write canonical `(C, R, R)` TIFFs, `out_dir/manifest.parquet` and `out_dir/judging.json`."""
    folder, out_dir = Path(settings.folder), Path(out_dir)
    subset_manifest = pd.read_parquet(subset_manifest_path)
    known = Known.from_tables(pd.read_parquet(sites_path), subset_manifest)
    rows, value_range = check_external(settings, known, pixels=True)
    arms, trained = condition_arms(subset_manifest)
    conditions = [condition_key(c, s) for c, s in zip(rows["cell_type"], rows["sirna_id"])]
    ids, paths, problems = [], [], []
    for number, row in enumerate(tqdm(rows.itertuples(index=False), total=len(rows), desc="convert external",
                                      unit="img", mininterval=5), start=1):
        sample_id = f"external-{number:06d}"
        path = out_dir / "images" / f"{sample_id}.tif"
        image, problem = read_external(folder, row.path, settings, value_range)
        write_site(path, image)
        ids.append(sample_id)
        paths.append(str(path))
        problems.append(problem)
    table = pd.DataFrame({
        "Metadata_sample_id": ids,
        "Metadata_image_path": paths,
        "Metadata_cell_type": rows["cell_type"].to_numpy(),
        "Metadata_sirna_id": rows["sirna_id"].astype(int).to_numpy(),
        "Metadata_sirna": rows["sirna"].to_numpy(),
        "Metadata_condition": conditions,
        "Metadata_arm": [arms.get(c, "seen" if c in trained else "unseen") for c in conditions],
        "Metadata_source": "generated",
        "Metadata_generator": f"external:{settings.layout}",
        "Metadata_external_path": rows["path"].to_numpy(),
        "Metadata_external_line": [int(w.removeprefix("line ")) if w.startswith("line ") else 0
                                   for w in rows["where"]],
        IMAGE_PROBLEM: problems,  # the features stage adds what it sees in the stored image
    })
    write_parquet(table, out_dir / "manifest.parquet")
    notes = judging_notes(settings, rows["size"], native_px or int(rows["size"].max()),
                          subsets_resolution or settings.resolution)
    write_json({**notes, "value_range": value_range, "value_range_declared": settings.value_range,
                "n_images": len(table)}, out_dir / "judging.json")
    arm_counts = table["Metadata_arm"].value_counts()
    print(f"{len(table)} external images from {folder} ({settings.layout}, value range {value_range}, channels "
          f"{settings.channels}) -> {settings.resolution} px; " + ", ".join(f"{a} {n}" for a, n in arm_counts.items()))
    for sentence in notes["sentences"]:
        print(sentence)
    return table


def reference_site(image: np.ndarray, settings: ExternalSettings, rng: np.random.Generator) -> np.ndarray:
    """A native real site as the external images show one: cropped (crop_px, seeded position), brought to the
    judging resolution, mapped to the composite channels."""
    if settings.crop_px:
        size = image.shape[1]
        if settings.crop_px > size:
            raise ValueError(f"crop_px {settings.crop_px} is larger than the real site ({size} px)")
        top, left = rng.integers(0, size - settings.crop_px + 1, size=2)
        image = image[:, top:top + settings.crop_px, left:left + settings.crop_px]
    image = resize_site(image, settings.resolution)
    return composite_of(image, settings.channels) if settings.composite else image


def build_reference(settings: ExternalSettings, subset_manifest_path, split: str, out, seed: int = 0) -> None:
    """The real sites of one split as the external images show them: `(N, C, R, R)` uint8, in the subset stack's
    order (Metadata_stack_index), from the native ingested sites."""
    from ..features import real_split_rows

    rows = real_split_rows(pd.read_parquet(subset_manifest_path), split)
    channels, size = settings.image_channels, settings.resolution
    flat = 0
    with atomic_path(out, suffix=".npy") as tmp:
        stack = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), channels, size, size))
        for i, (index, path) in enumerate(zip(rows["Metadata_stack_index"], rows["Metadata_image_path"])):
            rng = np.random.default_rng([seed, int(index), ("train", "calibration", "evaluation").index(split)])
            stack[i] = reference_site(read_site(path), settings, rng)
            flat += formats.degenerate(stack[i])
        stack.flush()
        del stack
        if flat > len(rows) / 2:  # nothing left to compare: say so here, not as zero features later
            raise InputError(f"{flat} of {len(rows)} real {split} sites are blank or nearly so after the mapping "
                             f"{settings.channels} (crop {settings.crop_px}, {size} px): it erases what the images "
                             "show", where="generated.external.channels", expected="a mapping that keeps the real "
                             "sites visible (for a matrix: larger weights)")
    print(f"real reference {split}: {len(rows)} sites -> {out} ({channels} channels, {size} px"
          + (f", {settings.crop_px}-px crops" if settings.crop_px else "") + ")")
