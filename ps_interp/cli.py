"""`ps-interp` command line: `ps-interp run [--config FILE.toml]` runs the main job.

Example:
    $ ps-interp run                       # the embedded default, all ten languages
    $ ps-interp run --config configs/tiny.toml --name smoke
"""
from __future__ import annotations

import argparse
import sys

from .errors import PsInterpError

EXAMPLE_CONFIGS = ("llama-3-8b-instruct", "qwen2.5-7b-instruct", "llava-1.5-7b", "qwen2.5-vl-7b")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ps-interp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="record, identify, overlap, causal check, align, evaluate, report")
    run.add_argument("--config", help="a TOML file (see configs/); default: the embedded default model")
    run.add_argument("--name", help="run name (folder under runs/)")
    run.add_argument("--out", help="output folder for runs (default: runs)")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    from .config import RunConfig
    from .pipeline import run_study

    try:
        cfg = RunConfig.from_toml(args.config) if args.config else RunConfig()
        if args.name:
            cfg.name = args.name
        if args.out:
            cfg.out_dir = args.out
        if args.threads:
            cfg.threads = args.threads
        folder = run_study(cfg)
    except PsInterpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
