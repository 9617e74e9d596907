"""File inventories: what a job reads from the user's folders, as a small text file Snakemake can track.

Snakemake reruns a job when an input is newer than its outputs, or when the job's params or code change. The
images a job reads from the user's folders (an RxRx1 plate folder, the external generations) are not
Snakemake inputs: RxRx1 has 750,000 of them. Instead, while Snakemake builds its DAG, the Snakefile calls
`track()` for each such job: it lists the files (name, size, mtime in ns), and rewrites the inventory file only
when that listing differs from the one on disk. The inventory is an input of the job, so

- files unchanged -> inventory untouched -> "Nothing to be done";
- a file replaced, fixed, added or removed (its size or mtime changes) -> the inventory is rewritten -> it is
  newer than the job's outputs -> the job, and everything downstream of it, reruns.

Listing is one `stat` per file (no file is opened); see BENCHMARKS.md for the cost at RxRx1 size. Not seen: a
file whose content changes while keeping both its size and its mtime to the nanosecond (e.g. `touch -r`
afterwards on purpose); delete the job's outputs to force a rerun then.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import write_text
from .rxrx1 import IMAGE_SUFFIXES, plate_folder

HEADER = "# morphotrust file inventory: name, size in bytes, mtime in ns (see morphotrust.data.inventory)\n"


def _line(name: str, path: str) -> str:
    try:
        stat = os.stat(path)  # follows links, like the readers do
    except OSError:
        return f"{name}\tmissing\n"
    return f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n"


def plate_inventory(root, experiment: str, plate: int) -> str:
    """Inventory of one plate folder's image files (the files ingest reads; hidden files are ignored)."""
    folder = plate_folder(root, experiment, plate)
    try:
        entries = sorted((e.name, e.path) for e in os.scandir(folder)
                         if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES))
    except (FileNotFoundError, NotADirectoryError):
        return f"{HEADER}{folder}\tno folder\n"
    return HEADER + "".join(_line(name, path) for name, path in entries)


def folders_inventory(root) -> str:
    """The experiment and plate folder names under `{root}/images` (what merge checks against the metadata)."""
    images = Path(root) / "images"
    lines = []
    if images.is_dir():
        for entry in sorted(os.scandir(images), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            lines.append(f"{entry.name}\n")
            if entry.is_dir():
                lines += [f"{entry.name}/{p.name}\n" for p in sorted(os.scandir(entry.path), key=lambda e: e.name)
                          if not p.name.startswith(".")]
    return HEADER + "".join(lines)


def external_inventory(settings) -> str:
    """Inventory of every file the external generations consist of (the manifest's or the pattern's images;
    morphotrust.generated.layouts.ExternalSettings).

    A layout that cannot be listed (an unreadable manifest, a missing folder) gives an inventory that says so;
    the plan's check reports the problem itself."""
    from ..generated.formats import files_of
    from ..generated.layouts import entries_of

    try:
        paths = [entry.path for entry in entries_of(settings)]
    except Exception as error:  # noqa: BLE001 - any problem is the check's to report
        return f"{HEADER}{settings.manifest or settings.folder}\tunlisted ({type(error).__name__})\n"
    names = sorted({name for path in paths if path for name in files_of(path)})
    return HEADER + "".join(_line(name, os.path.join(settings.folder, name)) for name in names)


def track(path, listing: str) -> str:
    """Write `listing` to `path` unless it already holds exactly that (so its mtime moves only when the files
    change); return `path` for use as a Snakemake input."""
    path = Path(path)
    try:
        if path.read_text() == listing:
            return str(path)
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(listing, path)
    return str(path)


def plate_input(root, experiment: str, plate) -> str:
    """The tracked inventory of one plate folder, for data_ingest_plate's input."""
    listing = plate_inventory(root, experiment, int(plate))
    return track(f"results/inventory/data/{experiment}/Plate{plate}.tsv", listing)


def folders_input(root) -> str:
    """The tracked inventory of the experiment and plate folders, for data_merge's input."""
    return track("results/inventory/data/image_folders.tsv", folders_inventory(root))


def external_input(settings) -> str:
    """The tracked inventory of the external generations, for the external rule's input."""
    return track("results/inventory/external.tsv", external_inventory(settings))
