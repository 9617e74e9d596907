# Data stage (morphotrust.data): an RxRx1 folder, or the SYNTHETIC demo rendered in RxRx1's layout when
# data.rxrx1_path is null -> per-plate ingest (canonical (6, H, W) TIFF per site) -> merged sites table.
# Relies on METADATA (common.smk: morphotrust.data.plan_metadata(config["data"])). Shell commands spell out
# `python -m morphotrust` (the value of MT) because `snakemake --lint` flags globals used in shell commands.
import morphotrust.data as mtdata
from morphotrust.data import inventory

DATA_ROOT = mtdata.data_root(config["data"])
DEMO_DIR = mtdata.DEMO_DIR
PLATES = mtdata.plate_wildcards(METADATA)
PLATE_PATTERN = mtdata.PLATE_PATTERN
DEMO = mtdata.is_demo(config["data"])


# The user's image files are tracked by inventories (morphotrust.data.inventory): listed while the DAG is built,
# rewritten only when a file's size or mtime changes, and inputs of the jobs that read the files. The demo's
# images are outputs of data_demo_plate, tracked by Snakemake itself.


rule data_demo_metadata:
    output:
        metadata=f"{DEMO_DIR}/metadata.csv",
        effects=f"{DEMO_DIR}/demo_effects.json",
        readme=f"{DEMO_DIR}/SYNTHETIC_DATA_README.txt",
    log:
        "results/logs/data/demo_metadata.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=500,
    params:
        demo=cli_json(config["data"]["demo"]),
    shell:
        "python -m morphotrust data demo-metadata --metadata {output.metadata} --effects {output.effects}"
        " --readme {output.readme} --demo {params.demo} > {log} 2>&1"


rule data_demo_plate:
    output:
        directory(f"{DEMO_DIR}/images/{{experiment}}/Plate{{plate}}"),
    log:
        "results/logs/data/demo_plate/{experiment}_Plate{plate}.log",
    wildcard_constraints:
        **PLATE_PATTERN,
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        demo=cli_json(config["data"]["demo"]),
    shell:
        "python -m morphotrust data render-plate --plate-dir {output} --experiment {wildcards.experiment}"
        " --plate {wildcards.plate} --demo {params.demo} > {log} 2>&1"


rule data_ingest_plate:
    input:
        metadata=os.path.join(DATA_ROOT, "metadata.csv"),
        # the demo: also the rendered plate (and the marker that labels the sites synthetic)
        demo=(
            [f"{DEMO_DIR}/SYNTHETIC_DATA_README.txt", f"{DEMO_DIR}/images/{{experiment}}/Plate{{plate}}"]
            if DEMO
            else []
        ),
        # a real RxRx1 folder: the inventory of the plate's image files
        files=lambda w: [] if DEMO else inventory.plate_input(DATA_ROOT, w.experiment, w.plate),
    output:
        table="results/data/ingest/{experiment}/Plate{plate}/sites.parquet",
        qc="results/data/ingest/{experiment}/Plate{plate}/qc.csv",
        sites=directory("results/data/sites/{experiment}/Plate{plate}"),
    log:
        "results/logs/data/ingest/{experiment}_Plate{plate}.log",
    wildcard_constraints:
        **PLATE_PATTERN,
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        layout=config["data"]["layout"],
        on_bad_site=config["data"]["on_bad_site"],
        sixteen_bit=config["data"]["sixteen_bit"],
        sixteen_bit_max=config["data"]["sixteen_bit_max"],
    shell:
        "python -m morphotrust data ingest-plate --metadata {input.metadata:q} --experiment {wildcards.experiment}"
        " --plate {wildcards.plate} --layout {params.layout} --on-bad-site {params.on_bad_site}"
        " --sixteen-bit {params.sixteen_bit} --sixteen-bit-max {params.sixteen_bit_max}"
        " --sites-dir {output.sites} --table {output.table} --qc {output.qc} > {log} 2>&1"


rule data_merge:
    input:
        tables=expand("results/data/ingest/{experiment}/Plate{plate}/sites.parquet", zip, **PLATES),
        qc=expand("results/data/ingest/{experiment}/Plate{plate}/qc.csv", zip, **PLATES),
        metadata=os.path.join(DATA_ROOT, "metadata.csv"),
        # merge also reports image folders no metadata row refers to
        folders=lambda w: [] if DEMO else inventory.folders_input(DATA_ROOT),
    output:
        sites="results/data/sites.parquet",
        qc="results/data/qc_skipped.csv",
    log:
        "results/logs/data/merge.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        on_bad_site=config["data"]["on_bad_site"],
    shell:
        "python -m morphotrust data merge --metadata {input.metadata:q} --on-bad-site {params.on_bad_site}"
        " --tables {input.tables} --qc-tables {input.qc}"
        " --sites {output.sites} --qc {output.qc} --problems results/data/qc_problems.csv > {log} 2>&1"


rule data_demo_grid:
    input:
        sites="results/data/sites.parquet",
        effects=f"{DEMO_DIR}/demo_effects.json",
    output:
        report("results/data/demo_grid.png", caption="../report/demo_grid.rst", category="Data"),
    log:
        "results/logs/data/demo_grid.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "python -m morphotrust data demo-grid --sites {input.sites} --effects {input.effects}"
        " --out {output} > {log} 2>&1"
