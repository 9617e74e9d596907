# CellProfiler morphology (morphotrust.morphology): headless CellProfiler on the six stains of the real subset
# sites and the generated images, per chunk of sites in parallel jobs, merged into one per-image table per
# source, then feature cleaning fitted on real rows only.
#
#   morphology_pipeline   resources/cellprofiler/*.cppipe -> results/morphology/pipeline.cppipe (sizes from µm)
#   morphology_prepare    (checkpoint) manifest -> PNGs at morphology.resolution + chunk_NNN.csv (LoadData)
#                         + sites.parquet + resize.json; real sites from their native ingested TIFFs
#   morphology_scale      -> results/morphology/scale.json (px, µm/px, how each source was resized) for reports
#   morphology_chunk      cellprofiler -c -r on one chunk -> its Image.csv (+ ModuleError_Message per site)
#   morphology_merge      chunk tables -> results/morphology/{real,generated}_image.parquet (pycytominer's
#                         column conventions: morphotrust.morphology.fields)
#   morphology_clean      -> cleaner.npz/.json, real_clean.parquet, generated_clean.parquet, cleaning_report.json
#                         (real sites that failed the segmentation gate are left out)
# The light QC pass on EVERY ingested site, one CellProfiler job per plate (the same prepare / run-chunk machinery,
# resources/cellprofiler/qc_light.cppipe):
#   morphology_qc_pipeline  -> results/morphology/qc_pipeline.cppipe (sizes from µm)
#   morphology_qc_prepare   ingested plate -> results/morphology/qc/{experiment}/Plate{plate}/chunks (one chunk)
#   morphology_qc_plate     cellprofiler on the plate -> .../image.csv
#   morphology_qc_merge     every plate -> results/morphology/qc_image.parquet + the segmentation gate (stops the
#                           run when most sites fail it, morphology.gate.max_failed_fraction)
#
# The number of chunks (ceil(sites / chunk_size)) is known only once the manifest exists, so prepare is a
# checkpoint and the merge asks it for the chunk list. Shell commands spell out `python -m morphotrust`
# (`snakemake --lint` flags globals in shell commands).

from morphotrust.morphology.plan import morphology_plan

MORPHOLOGY = config["morphology"]
# With an autoencoder, its held-out reconstructions are measured too (the ceiling, ceiling.smk).
MORPHOLOGY_SOURCES = ["real", *SCORED_MANIFESTS]
MORPHOLOGY_MANIFESTS = {"real": "results/subsets/manifest.parquet", **SCORED_MANIFESTS}
# per-image tables cleaned besides real and generated (with the cleaner fitted on real rows)
MORPHOLOGY_ALSO = [f"results/morphology/{source}_image.parquet" for source in SCORED_MANIFESTS if source != "generated"]
# The comparison scale, the CellProfiler executable, size and gate options (morphotrust.morphology.plan); the
# pipelines' paths are resolved by check_config (a repository file when not in the working directory).
try:
    MORPHOLOGY_PLAN = morphology_plan(config)
except InputError as error:
    raise WorkflowError(f"morphotrust: {error}") from None
MORPHOLOGY_SCALE = MORPHOLOGY_PLAN.scale


rule morphology_pipeline:
    input:
        MORPHOLOGY["pipeline"],
    output:
        "results/morphology/pipeline.cppipe",
    log:
        "results/logs/morphology/pipeline.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        pixel_size=MORPHOLOGY_SCALE["pixel_size_um"],
        diameter=MORPHOLOGY_PLAN.diameter,
    shell:
        "python -m morphotrust morphology pipeline --template {input:q} --pixel-size-um {params.pixel_size}"
        " --nuclei-diameter-um {params.diameter} --out {output} > {log} 2>&1"


checkpoint morphology_prepare:
    input:
        manifest=lambda wildcards: MORPHOLOGY_MANIFESTS[wildcards.source],
    output:
        directory("results/morphology/{source}/chunks"),
    log:
        "results/logs/morphology/{source}/prepare.log",
    wildcard_constraints:
        source="|".join(MORPHOLOGY_SOURCES),
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        resolution=MORPHOLOGY_SCALE["resolution_px"],
        native=lambda wildcards: MORPHOLOGY_PLAN.native_option(wildcards.source),
        via=lambda wildcards: MORPHOLOGY_PLAN.via_option(wildcards.source),
        chunk_size=MORPHOLOGY["chunk_size"],
        cap=lambda wildcards: MORPHOLOGY_PLAN.cap_option(wildcards.source),
        seed=MORPHOLOGY["seed"],
    shell:
        "python -m morphotrust morphology prepare --source {wildcards.source} --manifest {input.manifest}"
        " --resolution {params.resolution} {params.native} {params.via} --chunk-size {params.chunk_size}"
        " {params.cap} --seed {params.seed} --out-dir {output} > {log} 2>&1"


rule morphology_scale:
    input:
        expand("results/morphology/{source}/chunks", source=MORPHOLOGY_SOURCES),
    output:
        "results/morphology/scale.json",
    log:
        "results/logs/morphology/scale.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        scale=cli_json(MORPHOLOGY_SCALE),
        resize=lambda wildcards, input: " ".join(os.path.join(d, "resize.json") for d in input),
    shell:
        "python -m morphotrust morphology scale --scale {params.scale} --resize {params.resize}"
        " --out {output} > {log} 2>&1"


# The wrapper writes {log} itself (what ran and how it ended; CellProfiler's own output beside it, in
# chunk_NNN.cellprofiler.log); on failure it exits 1 and prints the end of CellProfiler's output to the terminal (so no
# `> {log}` here: CellProfiler failures are never hidden). An image CellProfiler cannot measure fails that site, not
# the chunk (morphotrust.morphology.cellprofiler).
rule morphology_chunk:
    input:
        data="results/morphology/{source}/chunks/chunk_{chunk}.csv",
        pipeline="results/morphology/pipeline.cppipe",
    output:
        "results/morphology/{source}/image/chunk_{chunk}.csv",
    log:
        "results/logs/morphology/{source}/chunk_{chunk}.log",
    wildcard_constraints:
        source="|".join(MORPHOLOGY_SOURCES),
        chunk=r"\d+",
    conda:
        "../../envs/cellprofiler.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cellprofiler=MORPHOLOGY_PLAN.cellprofiler,
    shell:
        "python -m morphotrust morphology run-chunk --cellprofiler {params.cellprofiler:q}"
        " --pipeline {input.pipeline} --data-file {input.data} --out {output} --log {log}"


rule morphology_merge:
    input:
        chunks_dir="results/morphology/{source}/chunks",
        # the chunks that the checkpoint wrote: chunk_001.csv ... (known once it has run)
        tables=lambda wildcards: expand(
            "results/morphology/{source}/image/chunk_{chunk}.csv",
            source=wildcards.source,
            chunk=sorted(
                glob_wildcards(
                    os.path.join(checkpoints.morphology_prepare.get(**wildcards).output[0], "chunk_{chunk}.csv")
                ).chunk
            ),
        ),
    output:
        "results/morphology/{source}_image.parquet",
    log:
        "results/logs/morphology/{source}/merge.log",
    wildcard_constraints:
        source="|".join(MORPHOLOGY_SOURCES),
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        # the segmentation gate; only real sites can stop the run (failed generated images are trust's business)
        gate=lambda wildcards: MORPHOLOGY_PLAN.merge_gate_options(wildcards.source),
    shell:
        "python -m morphotrust morphology merge --sites {input.chunks_dir}/sites.parquet --out {output}"
        " --source {wildcards.source} {params.gate} {input.tables} > {log} 2>&1"


rule morphology_clean:
    input:
        real="results/morphology/real_image.parquet",
        generated="results/morphology/generated_image.parquet",
        also=MORPHOLOGY_ALSO,
    output:
        cleaner="results/morphology/cleaner.npz",
        cleaner_json="results/morphology/cleaner.json",
        real="results/morphology/real_clean.parquet",
        generated="results/morphology/generated_clean.parquet",
        also=[path.replace("_image", "_clean") for path in MORPHOLOGY_ALSO],
        report="results/morphology/cleaning_report.json",
    log:
        "results/logs/morphology/clean.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        variance_filter=MORPHOLOGY["variance_filter"],
        relative_variance_threshold=MORPHOLOGY["relative_variance_threshold"],
        variance_threshold=MORPHOLOGY["variance_threshold"],
        max_abs_z=MORPHOLOGY["max_abs_z"],
        also=lambda wildcards, input: f"--also {' '.join(input.also)}" if input.also else "",
    shell:
        "python -m morphotrust morphology clean --real {input.real} --generated {input.generated} {params.also}"
        " --variance-filter {params.variance_filter} --relative-variance-threshold"
        " {params.relative_variance_threshold} --variance-threshold {params.variance_threshold}"
        " --max-abs-z {params.max_abs_z}"
        " --out-dir results/morphology > {log} 2>&1"


rule morphology_qc_pipeline:
    input:
        MORPHOLOGY["qc_pipeline"],
    output:
        "results/morphology/qc_pipeline.cppipe",
    log:
        "results/logs/morphology/qc_pipeline.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    params:
        pixel_size=MORPHOLOGY_SCALE["pixel_size_um"],
        diameter=MORPHOLOGY_PLAN.diameter,
    shell:
        "python -m morphotrust morphology pipeline --light --template {input:q} --pixel-size-um {params.pixel_size}"
        " --nuclei-diameter-um {params.diameter} --out {output} > {log} 2>&1"


# Every ingested site of a plate in ONE chunk: one CellProfiler start-up (~9 s, a JVM) per plate.
rule morphology_qc_prepare:
    input:
        table="results/data/ingest/{experiment}/Plate{plate}/sites.parquet",
        sites="results/data/sites/{experiment}/Plate{plate}",
    output:
        directory("results/morphology/qc/{experiment}/Plate{plate}/chunks"),
    log:
        "results/logs/morphology/qc/{experiment}_Plate{plate}_prepare.log",
    wildcard_constraints:
        **PLATE_PATTERN,
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        resolution=MORPHOLOGY_SCALE["resolution_px"],
        native=MORPHOLOGY_SCALE["native_px"],
    shell:
        "python -m morphotrust morphology prepare --source qc --manifest {input.table} --resolution {params.resolution}"
        " --native-px {params.native} --chunk-size 1000000 --out-dir {output} > {log} 2>&1"


rule morphology_qc_plate:
    input:
        chunks="results/morphology/qc/{experiment}/Plate{plate}/chunks",
        pipeline="results/morphology/qc_pipeline.cppipe",
    output:
        "results/morphology/qc/{experiment}/Plate{plate}/image.csv",
    log:
        "results/logs/morphology/qc/{experiment}_Plate{plate}.log",
    wildcard_constraints:
        **PLATE_PATTERN,
    conda:
        "../../envs/cellprofiler.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cellprofiler=MORPHOLOGY_PLAN.cellprofiler,
    shell:
        "python -m morphotrust morphology run-chunk --cellprofiler {params.cellprofiler:q}"
        " --pipeline {input.pipeline} --data-file {input.chunks}/chunk_001.csv --out {output} --log {log}"


rule morphology_qc_merge:
    input:
        expand("results/morphology/qc/{experiment}/Plate{plate}/image.csv", zip, **PLATES),
    output:
        "results/morphology/qc_image.parquet",
    log:
        "results/logs/morphology/qc_merge.log",
    conda:
        "../../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        plates=lambda wildcards, input: " ".join(os.path.dirname(path) for path in input),
        gate=MORPHOLOGY_PLAN.gate_options,
    shell:
        "python -m morphotrust morphology qc-merge --out {output} {params.gate} {params.plates} > {log} 2>&1"
