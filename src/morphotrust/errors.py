"""Errors meant for the person running the workflow, raised where bad input enters."""

from __future__ import annotations

import shutil
from pathlib import Path


class InputError(ValueError):
    """Bad user input: says which file, which entry or line, and what was expected."""

    def __init__(self, problem: str, *, file=None, where: str | None = None, expected: str | None = None):
        self.problem, self.file, self.where, self.expected = problem, file, where, expected
        parts = []
        if file is not None:
            parts.append(f"{file}")
        if where:
            parts.append(where)
        head = ": ".join(parts)
        message = f"{head}: {problem}" if head else problem
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class InputErrors(InputError):
    """Several problems found in one pass, reported together so the user fixes them all at once."""

    def __init__(self, summary: str, problems: list[str], *, file=None, limit: int = 50):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        super().__init__(f"{summary} ({len(self.problems)} problem(s)):\n{shown}{more}", file=file)


class OutputError(OSError):
    """An output could not be written (read-only or missing folder, full disk, a file where a folder should be):
    one line naming the output path and the system's reason."""

    def __init__(self, path, error: OSError):
        reason = error.strerror or str(error)
        hint = {28: " (the disk is full)", 30: " (the file system is read-only)",
                27: " (larger than this file system or a ulimit allows)"}.get(error.errno, "")
        if error.errno in (17, 20):  # mkdir over a file: "File exists" / "Not a directory"
            reason, hint = "a file stands where a folder is needed", ""
        if error.errno is None:  # a short write without an error number (numpy: "16384 requested and 992 written")
            hint = _short_write_cause(path)
        where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
        super().__init__(error.errno, f"cannot write {path}: {reason}{hint}{where}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def _short_write_cause(path) -> str:
    """Why a write to `path` stopped short when the system gave no reason: a file-size limit, or a full disk."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return f" (a file-size limit, ulimit -f, of {limit} bytes)"
    except (ImportError, ValueError, OSError):
        pass
    folder = next((p for p in Path(path).absolute().parents if p.exists()), None)
    free = shutil.disk_usage(folder).free if folder is not None else None
    return f" (the disk is full: {free} bytes free)" if free is not None and free < 1 << 20 else " (the disk may be full)"
