"""Atomic file output and the few table/array formats every stage shares.

Every writer goes through `atomic_path`: the data lands in a temporary file next to the target and is
renamed over it only when complete, so a killed job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import OutputError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    A failure to create, write or rename it (read-only or full disk, no permission, a file where a folder should
    be) is an OutputError naming `path`, not a traceback; other errors of the block pass through unchanged.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise OutputError(path, error) from None
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
        try:
            yield tmp
        except OSError as error:
            # A write to the temporary file (no file name, or its own): the output's problem. An error naming
            # another file (an input read inside the block) is passed on as it is.
            if error.filename is None or Path(error.filename) == tmp:
                raise OutputError(path, error) from None
            raise
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise OutputError(path, error) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_problem(folder) -> str | None:
    """Why nothing can be written under `folder` (one line naming it), or None: a test file of one block is written
    and removed in it, or in its nearest existing parent folder when it does not exist yet (nothing is left)."""
    folder = Path(folder)
    probe_in = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    try:
        if probe_in is not None and not probe_in.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(prefix=".morphotrust-write-test.", dir=probe_in)
        try:
            os.write(fd, bytes(4096))  # a full disk still lets an empty file be made
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        return str(OutputError(folder, OSError(error.errno, error.strerror)))  # not the test file's name
    return None


def write_parquet(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_table(df: pd.DataFrame, path) -> None:
    """Parquet for the workflow, plus a CSV twin where a person may want to open it in a spreadsheet."""
    path = Path(path)
    if path.suffix == ".csv":
        write_csv(df, path)
    else:
        write_parquet(df, path)


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_npz(arrays: dict, path) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def write_text(text: str, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def touch(path) -> None:
    write_text("", path)
