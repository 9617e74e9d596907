"""Command line of the generator stage: `morphotrust generator <command> ...` (the generator.smk rules).

Each command imports its modules (and torch) only when it runs.
"""

from __future__ import annotations

import argparse
import sys


def add_autoencoder_argument(parser) -> None:
    parser.add_argument("--autoencoder", default=None,
                        help="results/autoencoder/autoencoder.json (generator.autoencoder trained | sd-vae)")


def add_common_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="the `generator` config section as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def add_model_arguments(parser, stacks_dir: str = "results/subsets/stacks") -> None:
    """The inputs of every job that runs the trained flow model (sampling, translator, generation trust)."""
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--stacks-dir", required=True, help=stacks_dir)
    parser.add_argument("--checkpoint", required=True, help="results/generator/checkpoint.pt")
    add_common_arguments(parser)
    add_autoencoder_argument(parser)


def parse_model_arguments(parser, argv: list[str]):
    """The parsed arguments and the checked `generator` config section; torch then uses --threads CPU threads."""
    import torch

    from .runtime import parse_config

    args = parser.parse_args(argv)
    cfg = parse_config(args.config)
    torch.set_num_threads(args.threads)
    return args, cfg


def add_training_arguments(parser, out_dir: str) -> None:
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet")
    parser.add_argument("--stacks-dir", required=True, help="results/subsets/stacks")
    parser.add_argument("--resolution", type=int, required=True, help="subsets.resolution")
    parser.add_argument("--out-dir", required=True, help=out_dir)
    add_common_arguments(parser)


def run_training(command: str, argv: list[str], cfg: dict, threads: int, data_parallel: bool, run) -> None:
    """Run `run(team, device)`: with `data_parallel` and generator.gpus x nodes > 1 under torchrun (this command
    relaunches itself there); a run stopped by a signal exits with INTERRUPTED_EXIT (Snakemake reruns it)."""
    import torch

    from .distributed import relaunch, team_for, threads_per_process, under_torchrun, world_size
    from .runtime import INTERRUPTED_EXIT, resolve_device

    if data_parallel and world_size(cfg) > 1 and not under_torchrun():
        relaunch(["generator", command, *argv], cfg, INTERRUPTED_EXIT)
    torch.set_num_threads(threads_per_process(threads))
    with team_for(resolve_device(cfg["device"])) as (team, device):
        result = run(team, device)
    if result["status"] == "interrupted":
        raise SystemExit(INTERRUPTED_EXIT)


def autoencoder(argv: list[str]) -> None:
    """`morphotrust generator autoencoder ...`"""
    from .autoencoder import autoencoder_stage
    from .runtime import parse_config

    parser = argparse.ArgumentParser(prog="morphotrust generator autoencoder",
                                     description="Train (trained) or load (sd-vae) the autoencoder and fit its "
                                                 "latent scaling on the seen arm's train split (resumable).")
    add_training_arguments(parser, "results/autoencoder")
    parser.add_argument("--reconstructions-dir", help="also write the held-out reconstructions as a generated set "
                                                      "here (results/generated/reconstructions)")
    args = parser.parse_args(argv)
    cfg = parse_config(args.config)
    run_training("autoencoder", argv, cfg, args.threads, cfg["autoencoder"] == "trained",
                 lambda team, device: autoencoder_stage(args.manifest, args.stacks_dir, args.out_dir, cfg,
                                                        args.resolution, device, team=team,
                                                        reconstructions_dir=args.reconstructions_dir))


def train(argv: list[str]) -> None:
    """`morphotrust generator train ...`"""
    from .runtime import parse_config
    from .train import train as train_flow

    parser = argparse.ArgumentParser(prog="morphotrust generator train",
                                     description="Train the conditional flow model on the seen arm (resumable).")
    add_training_arguments(parser, "results/generator")
    add_autoencoder_argument(parser)
    args = parser.parse_args(argv)
    cfg = parse_config(args.config)
    run_training("train", argv, cfg, args.threads, True,
                 lambda team, device: train_flow(args.manifest, args.stacks_dir, args.out_dir, cfg, args.resolution,
                                                 device, autoencoder=args.autoencoder, team=team))


def sample(argv: list[str]) -> None:
    """`morphotrust generator sample ...`"""
    from ..io import write_parquet
    from .sample import merge_shards, run_sampling

    parser = argparse.ArgumentParser(prog="morphotrust generator sample",
                                     description="Sample every seen and unseen condition (resumable).")
    add_model_arguments(parser, "results/subsets/stacks (real sites for the grid)")
    parser.add_argument("--out-dir", required=True, help="results/generated/generator")
    parser.add_argument("--shard", type=int, default=0, help="condition group to sample (with --shards > 1)")
    parser.add_argument("--shards", type=int, default=1, help="generator.sample_shards")
    parser.add_argument("--shard-out", help="the shard's table (with --shards > 1)")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_TABLE",
                        help="write the manifest, grid and summary from these shard tables (in shard order)")
    args, cfg = parse_model_arguments(parser, argv)
    if args.merge:
        merge_shards(args.manifest, args.stacks_dir, args.checkpoint, args.merge, args.out_dir, cfg)
        return
    if args.shards > 1 and not args.shard_out:
        parser.error("--shards > 1 needs --shard-out")
    generated = run_sampling(args.manifest, args.stacks_dir, args.checkpoint, args.out_dir, cfg, cfg["device"],
                             autoencoder=args.autoencoder, shard=(args.shard, args.shards))
    if args.shards > 1:
        write_parquet(generated, args.shard_out)


def export_weights(argv: list[str]) -> None:
    """`morphotrust generator export-weights ...`"""
    from .init_weights import KINDS, export_from_run

    parser = argparse.ArgumentParser(prog="morphotrust generator export-weights",
                                     description="Write a trained network as an init-weights file (config "
                                                 "generator.init_weights / trained_autoencoder.init_weights).")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--source", required=True,
                        help="results/autoencoder (kind autoencoder) or results/generator/checkpoint.pt (kind flow)")
    parser.add_argument("--manifest", required=True, help="results/subsets/manifest.parquet of the run")
    parser.add_argument("--stacks-dir", required=True, help="results/subsets/stacks of the run")
    parser.add_argument("--resolution", type=int, required=True, help="subsets.resolution of the run")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    header = export_from_run(args.kind, args.source, args.manifest, args.stacks_dir, args.resolution, args.out)
    print(f"wrote {args.out}: {args.kind}, {header['steps']} steps, trained on "
          f"{header['training_data']['n_sites']} sites", file=sys.stderr)


COMMANDS = {"autoencoder": autoencoder, "train": train, "sample": sample, "export-weights": export_weights}


def dispatch(stage: str, commands: dict, argv: list[str]) -> None:
    """Run `commands[argv[0]](argv[1:])`, or print the stage's usage (exit 0 for -h / --help, else 2)."""
    if not argv or argv[0] not in commands:
        print(f"usage: morphotrust {stage} {{{','.join(commands)}}} [options]", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])


def cli(argv: list[str]) -> None:
    dispatch("generator", COMMANDS, argv)
