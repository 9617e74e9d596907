"""Command line: `morphotrust <stage> <command> [options]` (also `python -m morphotrust ...`).

Each stage package's `cli.py` defines `cli(argv)`; it is imported lazily so a data job never imports torch.
Input problems (`InputError`) are printed as one plain message and exit with status 2; an output that cannot be
written, or any other file-system error (read-only or full disk, no permission), as one line naming the path,
exit status 1.
"""

from __future__ import annotations

import importlib
import sys

from .errors import InputError, OutputError

STAGES = ("data", "subsets", "generator", "generated", "generation_trust", "features", "reduction", "trust",
          "morphology", "validation", "report", "coverage_experiment", "ceiling")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        print(f"usage: morphotrust {{{','.join(STAGES)}}} <command> [options]", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(f"morphotrust.{argv[0]}.cli")
    try:
        module.cli(argv[1:])
    except InputError as error:
        print(f"morphotrust: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # OutputError from morphotrust.io, or a library's own write (torch.save, PIL, ...)
        print(f"morphotrust: error: {describe_os_error(error)}", file=sys.stderr)
        raise SystemExit(1) from None


def describe_os_error(error: OSError) -> str:
    """One line: `cannot write PATH: reason`, or the file and reason of any other file-system error."""
    if isinstance(error, OutputError) or not error.filename:
        return str(error)
    target = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    return f"{target}: {error.strerror or error}"


if __name__ == "__main__":
    main()
