"""The one YAML reader that remembers lines: messages about a config or conditions file name the line of the
key or list item at fault; and the schemas, read once per process. Both parse with libyaml where PyYAML has it
(the same data, ~10x faster: every Snakemake start and every SLURM job reads the config schema)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import InputError

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def _parsed_schema(path: str):
    return yaml.load(Path(path).read_text(), Loader=LOADER)


def read_schema(path):
    """A YAML schema shipped in the repository, parsed once per process; the caller gets its own copy."""
    return copy.deepcopy(_parsed_schema(str(path)))


def read_yaml_with_lines(path, what: str = "YAML file") -> tuple[object, dict[tuple, int]]:
    """(data, {key path: 1-based line}) of a YAML file; `data` is {} for an empty file.

    Key paths cover every mapping key and list item: `("subsets", "seed")`, `("seen", 0)`. An unreadable file or
    malformed YAML is an InputError naming the file (`what` says which file it is) and, for YAML, line and column.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"cannot read the {what} ({error.strerror})", file=path) from None
    try:
        root = yaml.compose(text, Loader=LOADER)
        data = yaml.load(text, Loader=LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise InputError(f"malformed YAML: {getattr(error, 'problem', None) or error}", file=path,
                         where=f"line {mark.line + 1}, column {mark.column + 1}" if mark else None) from None
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*prefix, index)] = item.start_mark.line + 1
                walk(item, (*prefix, index))

    if root is not None:
        walk(root, ())
    return ({} if data is None else data), lines
