"""`fastvc download`: fetch the Seed-VC weights ahead of serving, then check that they load.

    fastvc download [--config server.toml] [--cache-dir DIR] [--no-verify]

Files come from the Hugging Face hub into huggingface_hub's cache (`[model] cache_dir`, else `HF_HOME`;
`HF_ENDPOINT` selects a mirror); files given by `[model] *_path` are used as they are. Then, unless
`--no-verify`, the model is built and every checkpoint loaded strictly, so a file that does not fit is reported
now rather than when the server starts. Exit codes: 0 ready, 1 a file is missing or does not fit, 2 bad config.
"""

from __future__ import annotations

import argparse
import sys

from fastvc.config import Config


def add_command(parser: argparse.ArgumentParser):
    """Set up the `download` sub-command of the `fastvc` CLI; returns its handler."""
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--config", default=None, help="TOML config (default: ./server.toml if present)")
    parser.add_argument("--cache-dir", default=None, help="download cache (overrides [model] cache_dir)")
    parser.add_argument("--no-verify", action="store_true", help="only fetch; do not load the checkpoints")
    return run


def run(args: argparse.Namespace) -> int:
    from fastvc.cli import _load  # the CLI's config lookup (./server.toml by default)

    config = _load(args)
    if args.cache_dir:
        config.model.cache_dir = args.cache_dir
    return download(config, verify=not args.no_verify)


def download(config: Config, *, verify: bool = True) -> int:
    from fastvc.model import weights

    try:
        files = weights.download_weights(config.model)
    except weights.MissingWeightsError as error:
        print(f"fastvc download: could not fetch {len(error.missing)} file(s):", file=sys.stderr)
        for reason in error.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 1
    for name, path in vars(files).items():
        print(f"{name}: {path}")
    if not verify:
        return 0
    try:
        dropped = verify_loading(files)
    except weights.WeightsError as error:
        print(f"fastvc download: the files do not fit the model:\n{error}", file=sys.stderr)
        return 1
    print("verified: every checkpoint loads strictly (unused keys skipped: "
          + ", ".join(f"{name} {len(keys)}" for name, keys in dropped.items()) + ")")
    return 0


def verify_loading(files) -> dict[str, list[str]]:
    """Build the real model and load every checkpoint into it; returns the unused keys skipped per group."""
    from fastvc.model import weights
    from fastvc.model.seedvc import SeedVCModel

    checkpoint = weights.read_checkpoint(files)
    return SeedVCModel(checkpoint.configs).load_checkpoint(checkpoint.state_dicts)
