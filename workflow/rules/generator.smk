# The workflow's own conditional generator (morphotrust.generator), a SiT-style flow model: train on the seen
# arm's train split, then sample every seen and unseen condition. Both are resumable: a killed or preempted job
# leaves its progress in results/generator/checkpoints/ and results/generated/generator/{parts,images}/
# (deliberately not declared as outputs, so Snakemake keeps them), and the rerun continues from there.
# generator.autoencoder trained | sd-vae: the flow model works on the latents of results/autoencoder/ and every
# generator job reads its autoencoder.json (none: pixel space, no autoencoder rule). generator.gpus x nodes > 1:
# train and autoencoder run data-parallel under torchrun (morphotrust.generator.distributed). GENERATOR (the config
# section) and GENERATION[...] (values derived from the config by morphotrust.config.generation_plan): common.smk.


# The autoencoder (generator.autoencoder trained | sd-vae), before the flow model: trained - train it on the seen
# arm's train split (resumable: results/autoencoder/checkpoints/, loss.csv, loss.png); sd-vae - load the frozen VAE.
# Either way fit the per-channel latent scaling on the training latents and reconstruct the held-out evaluation
# sites (per-stain PSNR in autoencoder.json, reconstructions.png), written as a generated set too
# (results/generated/reconstructions/): the ceiling of any generator on these latents, scored in ceiling.smk.
rule autoencoder:
    input:
        manifest="results/subsets/manifest.parquet",
        stacks=expand("results/subsets/stacks/{split}.npy", split=SPLITS),
        weights=GENERATION["sd_vae_weights"],
        init_weights=GENERATOR["trained_autoencoder"]["init_weights"] or [],
    output:
        **(
            {
                "weights": "results/autoencoder/autoencoder.safetensors",
                "loss_csv": "results/autoencoder/loss.csv",
                "loss_png": report("results/autoencoder/loss.png", category="Generator"),
            }
            if GENERATION["trained_autoencoder"]
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
    threads: GENERATION["training_threads"]
    resources:
        gpu=GENERATION["training_gpus"],
        gres=GENERATION["training_gres"],
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
        autoencoder=GENERATION["autoencoder_json"],
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
    threads: GENERATION["training_threads"]
    resources:
        gpu=GENERATION["training_gpus"],
        gres=GENERATION["training_gres"],
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
rule sample_shard:
    input:
        manifest="results/subsets/manifest.parquet",
        checkpoint="results/generator/checkpoint.pt",
        autoencoder=GENERATION["autoencoder_json"],
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
        shards=GENERATOR["sample_shards"],
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
        autoencoder=GENERATION["autoencoder_json"],
        shards=shard_paths(rules.sample_shard.output.table, GENERATOR["sample_shards"]),
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
