"""docs/design.md draws the map of the code: every stage's rule file and package exist, and so does every
repository path and `morphotrust.*` module the page names."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = (REPO / "docs" / "design.md").read_text()
REPOSITORY_FOLDERS = ("workflow/", "src/", "docs/", "resources/", "scripts/", "benchmarks/", "config/", "tests/")


def _stage_rows() -> list[list[str]]:
    table = DESIGN.split("## Stages", 1)[1].split("\n\n", 2)[1]
    rows = [re.split(r"(?<!\\)\|", line.strip("|")) for line in table.splitlines()[2:]]  # not at an escaped \|
    return [[cell.strip() for cell in row] for row in rows]


def test_every_stage_has_its_rule_file_and_package_of_the_same_name():
    rows = _stage_rows()
    assert len(rows) >= 10
    for stage, rule_file, package, _, outputs in rows:
        rule_path = re.search(r"`(workflow/rules/\w+\.smk)`", rule_file).group(1)
        assert (REPO / rule_path).is_file(), f"{stage}: {rule_path}"
        module = re.search(r"`morphotrust\.(\w+)`", package).group(1)
        src = REPO / "src" / "morphotrust"
        assert (src / module).is_dir() or (src / f"{module}.py").is_file(), f"{stage}: morphotrust.{module}"
        assert outputs.startswith("`results/"), f"{stage}: outputs"
    named = {re.search(r"workflow/rules/(\w+\.smk)", row[1]).group(1) for row in rows}
    rule_files = {path.name for path in (REPO / "workflow" / "rules").glob("*.smk")} - {"common.smk"}
    assert rule_files <= named, f"rule files missing from the Stages table: {sorted(rule_files - named)}"


def test_every_repository_path_and_module_the_page_names_exists():
    paths = {p for p in re.findall(r"`([\w./{}-]+)`", DESIGN) if p.startswith(REPOSITORY_FOLDERS)}
    missing = [p for p in sorted(paths) if "{" not in p and not (REPO / p).exists()]
    assert not missing, missing
    modules = set(re.findall(r"\bmorphotrust\.(\w+)", DESIGN))
    src = REPO / "src" / "morphotrust"
    missing = [m for m in sorted(modules) if not (src / m).is_dir() and not (src / f"{m}.py").is_file()]
    assert not missing, missing
