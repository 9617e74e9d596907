# The latent-space ceiling (morphotrust.ceiling), with generator.autoencoder trained | sd-vae: the autoencoder's
# reconstructions of held-out real sites (results/generated/reconstructions/, written by the autoencoder rule) go
# through the features, reduction and morphology rules as one more scored set, and are judged here like
# generations: trust acceptance, CellProfiler centroid z, and the autoencoder's per-stain PSNR -> results/ceiling/.


rule ceiling:
    input:
        scorer="results/trust/scorer.npz",
        scorer_json="results/trust/scorer.json",
        real_scores="results/trust/real_scores.parquet",
        features="results/reduction/reconstructions.parquet",
        sidecar="results/reduction/reconstructions.json",
        cp_real=VALIDATION_INPUTS["cp"]["real"],
        cp_reconstructions="results/morphology/reconstructions_clean.parquet",
        autoencoder="results/autoencoder/autoencoder.json",
    output:
        json="results/ceiling/ceiling.json",
        scores="results/ceiling/generated_scores.csv",
        centroid="results/ceiling/centroid_per_sample.csv",
        histogram=report("results/ceiling/trust_histogram.png", category="Generator"),
    log:
        "results/logs/ceiling.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        cfg=cli_json(config["validation"]),
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
    shell:
        "OMP_NUM_THREADS={threads} python -m morphotrust ceiling --scorer results/trust/scorer"
        " --features {input.features} --real-scores {input.real_scores} --cp-real {input.cp_real}"
        " --cp-reconstructions {input.cp_reconstructions} --autoencoder {input.autoencoder} --config {params.cfg}"
        " --out-dir {params.out_dir} > {log} 2>&1"
