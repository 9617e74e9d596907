"""Write config/README.md from the config schemas, so the documentation cannot drift from what is checked.

Usage: .venv/bin/python scripts/config_docs.py [--check]
"""

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"
OUTPUT = REPO / "config" / "README.md"

HEADER = """\
# Configuration reference

Generated from `workflow/schemas/config.schema.yaml` and `workflow/schemas/conditions.schema.yaml` by
`scripts/config_docs.py` (do not edit by hand). Both files are checked against these schemas when the workflow
starts; keys left out take the default shown. Paths are relative to the directory snakemake runs in.

## config/config.yaml

| key | type | default | meaning |
|---|---|---|---|
"""


def _rows(properties: dict, prefix: str = ""):
    for name, spec in properties.items():
        key = f"{prefix}{name}"
        kind = spec.get("type", "")
        if "enum" in spec:
            kind = " \\| ".join(str(v) for v in spec["enum"])
        if isinstance(kind, list):
            kind = " or ".join(kind)
        default = spec.get("default", "")
        if isinstance(default, (dict, list)) and spec.get("properties"):
            default = ""
        if default is None or isinstance(default, bool):
            default = yaml.safe_dump(default).split("\n")[0]
        description = " ".join(str(spec.get("description", "")).split())
        yield f"| `{key}` | {kind} | {f'`{default}`' if default != '' else ''} | {description} |"
        if spec.get("properties"):
            yield from _rows(spec["properties"], prefix=f"{key}.")


def render() -> str:
    config_schema = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())
    conditions_schema = yaml.safe_load((SCHEMAS / "conditions.schema.yaml").read_text())
    lines = [HEADER.rstrip("\n"), *_rows(config_schema["properties"]), "", "## config/conditions.yaml", "",
             " ".join(conditions_schema["description"].split()), "", "| key | type | meaning |", "|---|---|---|"]
    for arm in ("seen", "unseen"):
        lines.append(f"| `{arm}` | list | {' '.join(conditions_schema['properties'][arm]['description'].split())} |")
    for name, spec in conditions_schema["$defs"]["condition"]["properties"].items():
        lines.append(f"| `{{seen,unseen}}[].{name}` | {spec['type']} | {spec['description']} |")
    return "\n".join(lines) + "\n"


def undocumented(properties: dict, prefix: str = "") -> list[str]:
    """Keys of the schema without a description."""
    missing = []
    for name, spec in properties.items():
        if not spec.get("description"):
            missing.append(f"{prefix}{name}")
        missing += undocumented(spec.get("properties", {}), prefix=f"{prefix}{name}.")
    return missing


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUTPUT.read_text() == text else "config/README.md is out of date: run scripts/config_docs.py")
    OUTPUT.write_text(text)
