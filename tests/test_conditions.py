"""config/conditions.yaml validation: every bad input stops with a message naming file, entry and problem."""

import textwrap

import pandas as pd
import pytest

from morphotrust.subsets.conditions import condition_key, control_kind, load_conditions
from morphotrust.errors import InputError


def _metadata():
    rows = []
    for cell_type in ("HEPG2", "HUVEC", "RPE", "U2OS"):
        for sirna_id, sirna, well_type in ((0, "s0001", "treatment"), (1, "s0002", "treatment"),
                                           (2, "s0003", "treatment"), (1108, "s1108", "positive_control"),
                                           (1138, "EMPTY", "negative_control")):
            n = 3 if (cell_type, sirna_id) == ("RPE", 2) else 10
            rows += [{"cell_type": cell_type, "sirna_id": sirna_id, "sirna": sirna, "well_type": well_type}] * n
    return pd.DataFrame(rows)


def _write(tmp_path, text):
    path = tmp_path / "conditions.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_resolves_names_ids_and_controls(tmp_path):
    path = _write(tmp_path, """\
        seen:
          - {cell_type: HUVEC, sirna_id: 0}
          - {cell_type: HEPG2, sirna: s0002}
          - {cell_type: HUVEC, sirna_id: 1138}
          - {cell_type: HEPG2, sirna_id: 0}
          - {cell_type: U2OS, sirna_id: 1108}
        unseen:
          - {cell_type: HUVEC, sirna: s0002}
        """)
    conditions = load_conditions(path, _metadata(), min_sites=5)
    assert list(conditions["condition"]) == ["HUVEC:0", "HEPG2:1", "HUVEC:1138", "HEPG2:0", "U2OS:1108",
                                             "HUVEC:1"]
    assert list(conditions["arm"]) == ["seen"] * 5 + ["unseen"]
    assert list(conditions["control"]) == ["", "", "negative", "", "positive", ""]
    assert conditions.loc[1, "sirna_id"] == 1 and conditions.loc[5, "sirna"] == "s0002"
    assert conditions["n_sites"].tolist() == [10] * 6


def test_control_kinds():
    assert control_kind(1138) == "negative"
    assert control_kind(1108) == control_kind(1137) == "positive"
    assert control_kind(1107) is None and control_kind(0) is None
    assert condition_key("RPE", 7) == "RPE:7"


@pytest.mark.parametrize("text, expected", [
    ("seen:\n  - {cell_type: HUVEK, sirna_id: 0}\n",
     ["seen[0] (line 2)", "unknown cell type 'HUVEK'", "did you mean 'HUVEC'"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 999}\n", ["seen[0] (line 2)", "unknown sirna_id 999"]),
    ("seen:\n  - {cell_type: HUVEC, sirna: s0009}\n", ["unknown siRNA name 's0009'"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0}\n  - {cell_type: HUVEC, sirna: s0001}\n",
     ["seen[1] (line 3)", "HUVEC:0 is listed twice", "first at seen[0] (line 2)"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0}\n  - {cell_type: RPE, sirna_id: 0}\n"
     "unseen:\n  - {cell_type: RPE, sirna_id: 0}\n",
     ["unseen[0] (line 5)", "RPE:0 is in both the seen and the unseen list"]),
    ("seen:\n  - {cell_type: RPE, sirna_id: 2}\n",
     ["seen[0] (line 2)", "RPE:2 has 3 real site(s), fewer than subsets.min_sites_per_condition = 5"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0}\nunseen:\n  - {cell_type: HUVEC, sirna_id: 1}\n",
     ["unseen[0] (line 4)", "siRNA 1 (s0002) occurs in no seen condition"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0}\nunseen:\n  - {cell_type: RPE, sirna_id: 0}\n",
     ["cell type RPE occurs in no seen condition"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0, sirna: s0001}\n",
     ["seen[0] (line 2)", "exactly one of `sirna_id`"]),
    ("seen:\n  - {cell_type: HUVEC}\n", ["seen[0] (line 2)", "exactly one of `sirna_id`"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: '12'}\n", ["seen[0] (line 2)", "'12' is not of type 'integer'"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0, dose: 3}\n", ["Additional properties", "'dose'"]),
    ("seen: []\n", ["seen", "should be non-empty"]),
    ("unseen: []\n", ["'seen' is a required property"]),
    ("seen:\n  - {cell_type: HUVEC, sirna_id: 0\n", ["malformed YAML", "line 3"]),
])
def test_bad_conditions_are_named(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_conditions(path, _metadata(), min_sites=5)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message


def test_all_problems_reported_at_once(tmp_path):
    path = _write(tmp_path, "seen:\n  - {cell_type: X, sirna_id: 0}\n  - {cell_type: HUVEC, sirna_id: 999}\n")
    with pytest.raises(InputError) as caught:
        load_conditions(path, _metadata(), min_sites=1)
    assert "2 problem(s)" in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read the conditions file"):
        load_conditions(tmp_path / "absent.yaml", _metadata())
