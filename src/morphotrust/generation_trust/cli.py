"""Command line of the during-generation trust stage: `morphotrust generation_trust <command> ...` (the
generation_trust.smk rules). Each command imports its modules (and torch) only when it runs.
"""

from __future__ import annotations

import argparse
import json

from ..generator.cli import add_model_arguments, dispatch, parse_model_arguments


def translator(argv: list[str]) -> None:
    """`morphotrust generation_trust translator ...`"""
    from .stage import translator_stage

    parser = argparse.ArgumentParser(prog="morphotrust generation_trust translator",
                                     description="Fit the hidden-state -> encoder-feature translator.")
    add_model_arguments(parser)
    parser.add_argument("--features", required=True, help="results/features/real_train.parquet")
    parser.add_argument("--out", required=True, help="results/generation_trust/translator (.safetensors/.json)")
    args, cfg = parse_model_arguments(parser, argv)
    translator_stage(args.manifest, args.stacks_dir, args.checkpoint, args.features, args.out, cfg, cfg["device"],
                     autoencoder=args.autoencoder)


def generation_trust(argv: list[str]) -> None:
    """`morphotrust generation_trust generation-trust ...`"""
    from .stage import generation_trust_stage, merge_shards, shard_stage

    parser = argparse.ArgumentParser(prog="morphotrust generation_trust generation-trust",
                                     description="Score samples during generation; abandon early; compare.")
    add_model_arguments(parser)
    parser.add_argument("--translator", required=True, help="results/generation_trust/translator")
    parser.add_argument("--scorer", required=True, help="results/trust/scorer (.npz/.json)")
    parser.add_argument("--generated-scores", help="results/trust/generated_scores.parquet (not for a shard)")
    parser.add_argument("--centroid", help="results/validation/centroid_per_sample.csv (for the selection gain)")
    parser.add_argument("--validation-config", default="{}", help="the `validation` config section as JSON")
    parser.add_argument("--out-dir", help="results/generation_trust (not for a shard)")
    parser.add_argument("--shard", type=int, default=0, help="condition group (with --shards > 1)")
    parser.add_argument("--shards", type=int, default=1, help="generator.sample_shards")
    parser.add_argument("--shard-out", help="the shard's tables: PREFIX.{thresholds,step_scores,decisions}.parquet")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_DECISIONS",
                        help="write the outputs from these shards (their PREFIX.decisions.parquet, in shard order)")
    args, cfg = parse_model_arguments(parser, argv)
    if args.merge and not (args.generated_scores and args.out_dir):
        parser.error("--merge needs --generated-scores and --out-dir")
    if args.merge:
        merge_shards(args.merge, args.translator, args.scorer, args.generated_scores, args.out_dir, cfg,
                     centroid_path=args.centroid, validation_cfg=json.loads(args.validation_config))
        return
    if args.shards > 1:
        if not args.shard_out:
            parser.error("--shards > 1 needs --shard-out")
        shard_stage(args.manifest, args.stacks_dir, args.checkpoint, args.translator, args.scorer, args.shard_out,
                    cfg, (args.shard, args.shards), cfg["device"], autoencoder=args.autoencoder)
        return
    if not (args.generated_scores and args.out_dir):
        parser.error("--generated-scores and --out-dir are required (except for a shard)")
    generation_trust_stage(args.manifest, args.stacks_dir, args.checkpoint, args.translator, args.scorer,
                           args.generated_scores, args.out_dir, cfg, cfg["device"],
                           centroid_path=args.centroid, validation_cfg=json.loads(args.validation_config),
                           autoencoder=args.autoencoder)


COMMANDS = {"translator": translator, "generation-trust": generation_trust}


def cli(argv: list[str]) -> None:
    dispatch("generation_trust", COMMANDS, argv)
