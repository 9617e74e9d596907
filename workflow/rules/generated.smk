# Generated sources besides the workflow's own generator (morphotrust.generated): demo stand-ins and external
# generations. Every source writes results/generated/{source}/manifest.parquet (+ canonical TIFFs under images/);
# config `generated.source` picks the one the features and trust stages score. External manifest / pattern problems
# stop the plan in common.smk (EXTERNAL_SETTINGS, EXTERNAL_REFERENCE: morphotrust.config.generation_plan).
from morphotrust.morphology.scale import native_size_px


# Demo STAND-INS (not a generator): held-out real evaluation sites, clean and deliberately corrupted copies.
rule standins:
    input:
        manifest="results/subsets/manifest.parquet",
        stack="results/subsets/stacks/evaluation.npy",
    output:
        manifest="results/generated/standins/manifest.parquet",
        images=directory("results/generated/standins/images"),
    log:
        "results/logs/generator/standins.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        cfg=cli_json(config["generated"]["standins"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    shell:
        "python -m morphotrust generated standins --manifest {input.manifest} --stack {input.stack}"
        " --config {params.cfg} --out-dir {params.out_dir} > {log} 2>&1"


EXTERNAL = config["generated"]["external"]


# Bring your own generations: a folder of images (manifest, pattern or a peer's preset), checked and converted.
rule external:
    input:
        manifest=EXTERNAL["manifest"] or [],
        sites="results/data/sites.parquet",
        subsets="results/subsets/manifest.parquet",
        # every image file, as an inventory (morphotrust.data.inventory): replacing one reruns this
        files=lambda wildcards: inventory.external_input(EXTERNAL_SETTINGS),
    output:
        manifest="results/generated/external/manifest.parquet",
        images=directory("results/generated/external/images"),
        judging="results/generated/external/judging.json",
    log:
        "results/logs/generator/external.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        cfg=lambda wildcards: cli_json(EXTERNAL),  # a function: a pattern's {fields} are not wildcards
        resolution=config["subsets"]["resolution"],
        native=native_size_px(config),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    shell:
        "python -m morphotrust generated external --config {params.cfg} --subsets-resolution {params.resolution}"
        " --sites {input.sites} --subsets-manifest {input.subsets} --native-px {params.native}"
        " --out-dir {params.out_dir} > {log} 2>&1"


# The real sites as the external images show them (same mapping, resolution, crop), one stack per split.
rule external_reference:
    input:
        subsets="results/subsets/manifest.parquet",
    output:
        "results/generated/external/reference/{split}.npy",
    log:
        "results/logs/generator/external_reference_{split}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        cfg=lambda wildcards: cli_json(EXTERNAL),  # a function: a pattern's {fields} are not wildcards
        resolution=config["subsets"]["resolution"],
        seed=config["subsets"]["seed"],
    shell:
        "python -m morphotrust generated external --config {params.cfg} --subsets-resolution {params.resolution}"
        " --subsets-manifest {input.subsets} --reference {wildcards.split} --seed {params.seed} --out {output}"
        " > {log} 2>&1"
