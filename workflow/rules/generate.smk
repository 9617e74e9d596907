# Generated images (morphotrust.generator). Every source writes results/generated/{source}/manifest.parquet
# (+ canonical TIFFs under images/); config `generated.source` picks the one the features and trust stages score.
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
        "python -m morphotrust generator standins --manifest {input.manifest} --stack {input.stack}"
        " --config {params.cfg} --out-dir {params.out_dir} > {log} 2>&1"


EXTERNAL = config["generated"]["external"]
# (generated.source external without folder / manifest / pattern is refused by morphotrust.config at parse time;
# EXTERNAL_SETTINGS and EXTERNAL_REFERENCE: common.smk.)
# Every manifest / pattern problem (missing or unreadable files, wrong shapes, unknown values, an empty set) stops
# the plan, also `snakemake -n`, by line or path: file headers only; the job checks the pixels.
if config["generated"]["source"] == "external":
    from morphotrust.generator.external import Known as ExternalKnown, check_external

    try:
        check_external(EXTERNAL_SETTINGS, ExternalKnown.from_plan(METADATA, CONDITIONS), pixels=False)
    except InputError as error:
        raise WorkflowError(f"morphotrust: {error}") from None


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
        "python -m morphotrust generator external --config {params.cfg} --subsets-resolution {params.resolution}"
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
        "python -m morphotrust generator external --config {params.cfg} --subsets-resolution {params.resolution}"
        " --subsets-manifest {input.subsets} --reference {wildcards.split} --seed {params.seed} --out {output}"
        " > {log} 2>&1"


# The workflow's own conditional generator (SiT-style flow model): train on the seen arm's train split, then
# sample every seen and unseen condition. Both are resumable: a killed or preempted job leaves its progress in
# results/generator/checkpoints/ and results/generated/generator/{parts,images}/ (deliberately not declared as
# outputs, so Snakemake keeps them), and the rerun continues from there.
GENERATOR = config["generator"]
# generator.autoencoder trained | sd-vae: the flow model works on the latents of results/autoencoder/; every
# generator job reads its autoencoder.json (none: pixel space, no autoencoder rule).
LATENT = GENERATOR["autoencoder"] != "none"
AUTOENCODER_JSON = "results/autoencoder/autoencoder.json" if LATENT else []
# generator.gpus x nodes > 1: train and autoencoder run data-parallel under torchrun (morphotrust.generator.
# distributed), threads x gpus CPUs per node. One node asks SLURM for --gpus=N; several nodes ask for
# --gres=gpu:N, which is per node (--gpus would be spread over the nodes unevenly).
TRAINING_THREADS = GENERATOR["threads"] * GENERATOR["gpus"]
ONE_NODE = GENERATOR["nodes"] == 1
TRAINING_GPUS = GENERATOR["gpus"] if ONE_NODE else 0
TRAINING_GRES = "" if ONE_NODE else f"gpu:{GENERATOR['gpus']}"
if GENERATOR["autoencoder"] == "sd-vae" and not GENERATOR["sd_vae"]["weights"]:
    raise WorkflowError(
        "morphotrust: generator.autoencoder is sd-vae: set generator.sd_vae.weights to a local copy "
        "of stabilityai/sd-vae-ft-mse (README: fetch it once with `hf download`)"
    )


# The autoencoder (generator.autoencoder trained | sd-vae), before the flow model: trained - train it on the seen
# arm's train split (resumable: results/autoencoder/checkpoints/, loss.csv, loss.png); sd-vae - load the frozen VAE.
# Either way fit the per-channel latent scaling on the training latents and reconstruct the held-out evaluation
# sites (per-stain PSNR in autoencoder.json, reconstructions.png), written as a generated set too
# (results/generated/reconstructions/): the ceiling of any generator on these latents, scored in ceiling.smk.
rule autoencoder:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        weights=GENERATOR["sd_vae"]["weights"] if GENERATOR["autoencoder"] == "sd-vae" else [],
        init_weights=GENERATOR["trained_autoencoder"]["init_weights"] or [],
    output:
        **(
            {
                "weights": "results/autoencoder/autoencoder.safetensors",
                "loss_csv": "results/autoencoder/loss.csv",
                "loss_png": report("results/autoencoder/loss.png", category="Generator"),
            }
            if GENERATOR["autoencoder"] == "trained"
            else {}
        ),
        meta="results/autoencoder/autoencoder.json",
        reconstructions=report("results/autoencoder/reconstructions.png", category="Generator"),
        reconstructions_manifest="results/generated/reconstructions/manifest.parquet",
        reconstructions_images=directory("results/generated/reconstructions/images"),
    log:
        "results/logs/generator/autoencoder.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/generator.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=TRAINING_GPUS,
        gres=TRAINING_GRES,
        nodes=GENERATOR["nodes"],
    params:
        cfg=cli_json(GENERATOR),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        resolution=config["subsets"]["resolution"],
        out_dir=lambda wildcards, output: os.path.dirname(output.meta),
        reconstructions_dir=lambda wildcards, output: os.path.dirname(output.reconstructions_manifest),
    shell:
        "python -m morphotrust generator autoencoder --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --resolution {params.resolution} --out-dir {params.out_dir} --reconstructions-dir"
        " {params.reconstructions_dir} --config {params.cfg} --threads {threads} > {log} 2>&1"


rule train:
    input:
        manifest="results/subsets/manifest.parquet",
        stack="results/subsets/stacks/train.npy",
        autoencoder=AUTOENCODER_JSON,
        init_weights=GENERATOR["init_weights"] or [],
    output:
        checkpoint="results/generator/checkpoint.pt",
        loss_csv="results/generator/loss.csv",
        loss_png=report("results/generator/loss.png", caption="../report/generator_loss.rst", category="Generator"),
    log:
        "results/logs/generator/train.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/generator.yaml"
    threads: TRAINING_THREADS
    resources:
        gpu=TRAINING_GPUS,
        gres=TRAINING_GRES,
        nodes=GENERATOR["nodes"],
    params:
        cfg=cli_json(GENERATOR),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stack),
        resolution=config["subsets"]["resolution"],
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        autoencoder=autoencoder_option,
    shell:
        "python -m morphotrust generator train --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --resolution {params.resolution} --out-dir {params.out_dir} --config {params.cfg} --threads {threads}"
        " {params.autoencoder} > {log} 2>&1"


# generator.sample_shards > 1: sample_shard jobs sample condition groups, the sample job merges their tables.
SAMPLE_SHARDS = GENERATOR["sample_shards"]


rule sample_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=AUTOENCODER_JSON,
    output:
        table="results/generated/generator/shards/{shard}.parquet",
    log:
        "results/logs/generator/sample_shard_{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/generator.yaml"
    threads: GENERATOR["threads"]
    resources:
        gpu=1,
    params:
        cfg=cli_json(GENERATOR),
        shards=SAMPLE_SHARDS,
        stacks_dir="results/subsets/stacks",
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.table)),
        autoencoder=autoencoder_option,
    shell:
        "python -m morphotrust generator sample --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --out-dir {params.out_dir} --config {params.cfg} --threads {threads}"
        " --shard {wildcards.shard} --shards {params.shards} --shard-out {output.table} {params.autoencoder}"
        " > {log} 2>&1"


rule sample:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=AUTOENCODER_JSON,
        shards=shard_paths(rules.sample_shard.output.table, SAMPLE_SHARDS),
    output:
        manifest="results/generated/generator/manifest.parquet",
        grid=report(
            "results/generated/generator/grid.png", caption="../report/generator_grid.rst", category="Generator"
        ),
        summary="results/generated/generator/summary.json",
    log:
        "results/logs/generator/sample.log",
    priority: GENERATOR_PATH
    conda:
        "../../envs/generator.yaml"
    threads: GENERATOR["threads"]
    resources:
        gpu=1,
    params:
        cfg=cli_json(GENERATOR),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
        autoencoder=autoencoder_option,
        merge=merge_option,
    shell:
        "python -m morphotrust generator sample --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --out-dir {params.out_dir} --config {params.cfg} --threads {threads}"
        " {params.autoencoder} {params.merge} > {log} 2>&1"


# During-generation trust: a translator from the generator's hidden state to encoder features, per-step
# thresholds, and early abandonment compared with the post-generation decisions of the same samples (which
# exist when generated.source is generator) and, through the validation stage's CellProfiler centroid
# distances, with random choices of the same size (the selection gain).
rule generation_translator:
    input:
        manifest="results/subsets/manifest.parquet",
        stack="results/subsets/stacks/train.npy",
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=AUTOENCODER_JSON,
        features="results/reduction/real_train.parquet",
    output:
        weights="results/generation_trust/translator.safetensors",
        meta="results/generation_trust/translator.json",
    log:
        "results/logs/generator/translator.log",
    conda:
        "../../envs/generator.yaml"
    threads: GENERATOR["threads"]
    resources:
        gpu=1,
    params:
        cfg=cli_json(GENERATOR),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stack),
        out=lambda wildcards, output: os.path.splitext(output.weights)[0],
        autoencoder=autoencoder_option,
    shell:
        "python -m morphotrust generator translator --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --features {input.features} --out {params.out} --config {params.cfg}"
        " --threads {threads} {params.autoencoder} > {log} 2>&1"


# generator.sample_shards > 1 also splits the early abandonment into condition groups (each shard calibrates the
# same per-step thresholds); generation_trust then compares and summarises the merged tables.
rule generation_trust_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=AUTOENCODER_JSON,
        translator=rules.generation_translator.output.weights,
        translator_meta=rules.generation_translator.output.meta,
        scorer="results/trust/scorer.npz",
        scorer_meta="results/trust/scorer.json",
    output:
        thresholds="results/generation_trust/shards/{shard}.thresholds.parquet",
        step_scores="results/generation_trust/shards/{shard}.step_scores.parquet",
        decisions="results/generation_trust/shards/{shard}.decisions.parquet",
    log:
        "results/logs/generator/generation_trust_shard_{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/generator.yaml"
    threads: GENERATOR["threads"]
    resources:
        gpu=1,
    params:
        cfg=cli_json(GENERATOR),
        shards=SAMPLE_SHARDS,
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        translator=lambda wildcards, input: os.path.splitext(input.translator)[0],
        scorer=lambda wildcards, input: os.path.splitext(input.scorer)[0],
        prefix=lambda wildcards, output: output.decisions.removesuffix(".decisions.parquet"),
        autoencoder=autoencoder_option,
    shell:
        "python -m morphotrust generator generation-trust --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --translator {params.translator} --scorer {params.scorer}"
        " --config {params.cfg} --threads {threads}"
        " --shard {wildcards.shard} --shards {params.shards} --shard-out {params.prefix} {params.autoencoder}"
        " > {log} 2>&1"


rule generation_trust:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=AUTOENCODER_JSON,
        translator=rules.generation_translator.output.weights,
        translator_meta=rules.generation_translator.output.meta,
        scorer="results/trust/scorer.npz",
        scorer_meta="results/trust/scorer.json",
        generated_scores="results/trust/generated_scores.parquet",
        centroid="results/validation/centroid_per_sample.csv",
        shards=shard_paths(rules.generation_trust_shard.output.decisions, SAMPLE_SHARDS),
    output:
        summary="results/generation_trust/summary.json",
        thresholds="results/generation_trust/thresholds.csv",
        step_scores="results/generation_trust/step_scores.parquet",
        decisions="results/generation_trust/decisions.parquet",
        decisions_csv="results/generation_trust/decisions.csv",
    log:
        "results/logs/generator/generation_trust.log",
    conda:
        "../../envs/generator.yaml"
    threads: GENERATOR["threads"]
    resources:
        gpu=1,
    params:
        cfg=cli_json(GENERATOR),
        validation_cfg=cli_json(config["validation"]),
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        translator=lambda wildcards, input: os.path.splitext(input.translator)[0],
        scorer=lambda wildcards, input: os.path.splitext(input.scorer)[0],
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
        autoencoder=autoencoder_option,
        merge=merge_option,
    shell:
        "python -m morphotrust generator generation-trust --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --translator {params.translator} --scorer {params.scorer}"
        " --generated-scores {input.generated_scores} --centroid {input.centroid}"
        " --validation-config {params.validation_cfg} --out-dir {params.out_dir} --config {params.cfg}"
        " --threads {threads} {params.autoencoder} {params.merge} > {log} 2>&1"
