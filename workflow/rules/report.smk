# Reports (morphotrust.report): self-contained HTML for people (images embedded, no network needed).
#   report_plate      one QC report per real plate holding a studied condition -> results/report/plates/
#   report_generated  the generated set as a plate-like QC report, per condition -> results/report/generated.html
#   report_summary    the run across plates and conditions -> results/report/summary.html (+ qc_flags.csv)
# The plates are known at DAG time: the plates of METADATA (common.smk) holding a site of a condition in
# CONDITIONS. Shell commands spell out `python -m morphotrust` (`snakemake --lint` flags globals in shell commands).
# `snakemake --report` files the figures under "Plate QC" (one subcategory per plate) and "Run summary".
import morphotrust.report as mtreport
from morphotrust.data.plan import PLATE_PATTERN
from morphotrust.report.plan import report_inputs, report_options
from snakemake import __version__ as SNAKEMAKE_VERSION

REPORT = config["report"]
# report.paper_figures (a repository-relative path is resolved by morphotrust.config): the summary job's input
REPORT_PAPER_FIGURES = [REPORT["paper_figures"]] if REPORT["paper_figures"] else []


# A run that rebuilds reports first marks the current ones "out of date": a run that fails before its reports never
# leaves an earlier run's report looking current.
onstart:
    import time

    mtreport.mark_rebuilt_reports_stale(
        [path for job in workflow.dag.needrun_jobs() for path in job.output], time.strftime("%Y-%m-%d %H:%M")
    )


REPORT_PLATES = mtreport.plates_with_conditions(METADATA, CONDITIONS)
# The inputs every report reads, and the same as command-line options (morphotrust.report.plan).
REPORT_INPUTS = report_inputs(config, SPLITS, CELLPROFILER_APPLICABLE)
REPORT_OPTIONS = report_options(CELLPROFILER_APPLICABLE)


rule report_plate:
    input:
        **REPORT_INPUTS,
    output:
        html=report(
            "results/report/plates/{experiment}_Plate{plate}.html",
            caption="../report/plate.rst",
            category="Plate QC",
            subcategory="{experiment} Plate {plate}",
            labels={"plate": "{experiment} Plate {plate}", "content": "full QC report (HTML)"},
        ),
        map=report(
            "results/report/plates/{experiment}_Plate{plate}_map.png",
            caption="../report/plate_map.rst",
            category="Plate QC",
            subcategory="{experiment} Plate {plate}",
            labels={"plate": "{experiment} Plate {plate}", "content": "plate map"},
        ),
    log:
        "results/logs/report/plate/{experiment}_Plate{plate}.log",
    wildcard_constraints:
        **PLATE_PATTERN,
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=cli_json(REPORT),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        validation_dir=lambda wildcards, input: os.path.dirname(input.validation),
    shell:
        "python -m morphotrust report plate --experiment {wildcards.experiment} --plate {wildcards.plate} "
        + REPORT_OPTIONS
        + " --out {output.html} --map {output.map} > {log} 2>&1"


rule report_generated:
    input:
        **REPORT_INPUTS,
    output:
        html=report(
            "results/report/generated.html",
            caption="../report/generated.rst",
            category="Generated images",
            labels={"content": "full QC report (HTML)"},
        ),
        map=report(
            "results/report/generated_conditions.png",
            caption="../report/generated_map.rst",
            category="Generated images",
            labels={"content": "nuclei per site per condition"},
        ),
    log:
        "results/logs/report/generated.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=cli_json(REPORT),
        source=config["generated"]["source"],
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        validation_dir=lambda wildcards, input: os.path.dirname(input.validation),
    shell:
        "python -m morphotrust report generated --source {params.source} "
        + REPORT_OPTIONS
        + " --out {output.html} --map {output.map} > {log} 2>&1"


rule report_summary:
    input:
        **REPORT_INPUTS,
        plates=expand("results/report/plates/{experiment}_Plate{plate}.html", zip, **REPORT_PLATES),
        generated_report="results/report/generated.html",
        sidecars=expand("results/features/{name}.json", name=[f"real_{s}" for s in SPLITS] + ["generated"]),
        generation_trust=GENERATION_TRUST_SUMMARY,
        coverage_experiment=COVERAGE_EXPERIMENT,
        ceiling=CEILING,
        morphology_scale="results/morphology/scale.json" if CELLPROFILER_APPLICABLE else [],
        # how external images were judged (resolution, crops, composite mode), said in the summary
        external_judging=(
            "results/generated/external/judging.json" if config["generated"]["source"] == "external" else []
        ),
        paper_figures=REPORT_PAPER_FIGURES,
    output:
        html=report(
            "results/report/summary.html",
            caption="../report/summary.rst",
            category="Run summary",
            labels={"content": "run summary (HTML)"},
        ),
        acceptance=report(
            "results/report/acceptance.png",
            caption="../report/acceptance.rst",
            category="Run summary",
            labels={"content": "acceptance per condition"},
        ),
        flags=report(
            "results/report/qc_flags.csv",
            caption="../report/qc_flags.rst",
            category="Run summary",
            labels={"content": "image-quality flags (table)"},
        ),
    log:
        "results/logs/report/summary.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=cli_json(REPORT),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        validation_dir=lambda wildcards, input: os.path.dirname(input.validation),
        features_dir=lambda wildcards, input: os.path.dirname(input.sidecars[0]),
        snakemake_version=SNAKEMAKE_VERSION,
        cellprofiler=config["morphology"]["cellprofiler"],
        generation_trust=lambda wildcards, input: (
            f"--generation-trust {input.generation_trust} " if input.generation_trust else ""
        ),
    shell:
        "python -m morphotrust report summary --plate-reports {input.plates}"
        " --generated-report {input.generated_report}"
        " --features-dir {params.features_dir} --results-dir results --snakemake-version {params.snakemake_version}"
        " --cellprofiler {params.cellprofiler:q} {params.generation_trust}"
        + REPORT_OPTIONS
        + " --out {output.html} --acceptance {output.acceptance} --flags {output.flags} > {log} 2>&1"
