"""The values the rule files take from the stage packages' plan modules (worked out from the config at start)."""

import os

from morphotrust.config import REPO, schema_defaults
from morphotrust.data import is_demo
from morphotrust.morphology.plan import cellprofiler_executable, morphology_plan
from morphotrust.report.plan import report_inputs, report_options
from morphotrust.validation.plan import cp_only_headlines, validation_inputs, validation_spaces


def test_morphology_plan_options_follow_the_config(tmp_path, monkeypatch):
    config = schema_defaults()
    config["morphology"].update(max_sites_per_condition=None, max_generated_per_condition=5,
                                gate={"min_nuclei": 2, "max_nuclei": None, "max_failed_fraction": 0.5})
    plan = morphology_plan(config)
    assert plan.cap_option("generated") == "--max-sites-per-condition 5"
    assert plan.cap_option("real") == plan.cap_option("reconstructions") == ""
    assert plan.native_option("real") == f"--native-px {plan.scale['native_px']}" and plan.native_option("qc") == ""
    assert plan.via_option("generated") == ""
    low, high = config["morphology"]["nuclei_diameter_um"]
    assert plan.diameter == f"{low},{high}"
    assert plan.gate_options == (f"--pixel-size-um {plan.scale['pixel_size_um']} --nuclei-diameter-um {low},{high}"
                                 """ --gate '{"max_failed_fraction": 0.5, "max_nuclei": null, "min_nuclei": 2}'""")
    assert plan.merge_gate_options("real") == plan.gate_options + " --stop-on-failure"
    assert plan.merge_gate_options("generated") == plan.gate_options
    monkeypatch.chdir(tmp_path)  # a relative path not found here is the repository's; a bare name is looked up on PATH
    assert cellprofiler_executable("cellprofiler") == "cellprofiler"
    assert cellprofiler_executable(".venv-cellprofiler/bin/cellprofiler") == os.path.join(
        REPO, ".venv-cellprofiler/bin/cellprofiler")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "cellprofiler").touch()
    assert cellprofiler_executable("bin/cellprofiler") == "bin/cellprofiler"


def test_validation_and_report_plans_leave_cellprofiler_out_where_it_does_not_apply():
    assert validation_spaces(True) == ["cp", "encoder"] and validation_spaces(False) == ["encoder"]
    assert cp_only_headlines(False) == [] and len(cp_only_headlines(True)) == 2
    assert validation_inputs(["train", "evaluation"])["encoder"]["real"] == [
        "results/features/real_train.parquet", "results/features/real_evaluation.parquet"]
    config = {"generated": {"source": "external"}}
    assert "morphology_real" in report_inputs(config, ["train"], True)
    assert "morphology_real" not in report_inputs(config, ["train"], False)
    assert report_inputs(config, ["train"], False)["generated"] == "results/generated/external/manifest.parquet"
    assert "--morphology-real" in report_options(True) and "--morphology-real" not in report_options(False)
    assert is_demo({"rxrx1_path": None}) and not is_demo({"rxrx1_path": "rxrx1"})
