# During-generation trust (morphotrust.generation_trust) of the workflow's own generator (generator.smk): a
# translator from the generator's hidden state to encoder features, per-step thresholds, and early abandonment
# compared with the post-generation decisions of the same samples (which exist when generated.source is generator)
# and, through the validation stage's CellProfiler centroid distances, with random choices of the same size (the
# selection gain).
rule generation_translator:
    input:
        manifest="results/subsets/manifest.parquet",
        stack="results/subsets/stacks/train.npy",
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=GENERATION["autoencoder_json"],
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
        "python -m morphotrust generation_trust translator --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --features {input.features} --out {params.out} --config {params.cfg}"
        " --threads {threads} {params.autoencoder} > {log} 2>&1"


# generator.sample_shards > 1 also splits the early abandonment into condition groups (each shard calibrates the
# same per-step thresholds); generation_trust then compares and summarises the merged tables.
rule generation_trust_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=GENERATION["autoencoder_json"],
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
        shards=GENERATOR["sample_shards"],
        stacks_dir=lambda wildcards, input: os.path.dirname(input.stacks[0]),
        translator=lambda wildcards, input: os.path.splitext(input.translator)[0],
        scorer=lambda wildcards, input: os.path.splitext(input.scorer)[0],
        prefix=lambda wildcards, output: output.decisions.removesuffix(".decisions.parquet"),
        autoencoder=autoencoder_option,
    shell:
        "python -m morphotrust generation_trust generation-trust --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --translator {params.translator} --scorer {params.scorer}"
        " --config {params.cfg} --threads {threads}"
        " --shard {wildcards.shard} --shards {params.shards} --shard-out {params.prefix} {params.autoencoder}"
        " > {log} 2>&1"


rule generation_trust:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=GENERATION["autoencoder_json"],
        translator=rules.generation_translator.output.weights,
        translator_meta=rules.generation_translator.output.meta,
        scorer="results/trust/scorer.npz",
        scorer_meta="results/trust/scorer.json",
        generated_scores="results/trust/generated_scores.parquet",
        centroid="results/validation/centroid_per_sample.csv",
        shards=shard_paths(rules.generation_trust_shard.output.decisions, GENERATOR["sample_shards"]),
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
        "python -m morphotrust generation_trust generation-trust --manifest {input.manifest} --stacks-dir {params.stacks_dir}"
        " --checkpoint {input.checkpoint} --translator {params.translator} --scorer {params.scorer}"
        " --generated-scores {input.generated_scores} --centroid {input.centroid}"
        " --validation-config {params.validation_cfg} --out-dir {params.out_dir} --config {params.cfg}"
        " --threads {threads} {params.autoencoder} {params.merge} > {log} 2>&1"
