"""`dist-llm-train check`: validate a run config and a WAN preset, then exit.

`make up` runs this in a throwaway container before any service starts, so a bad file is
refused with its name and field and nothing is left half-started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_run_config
from .schema import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--profile", default="lan", help="WAN preset name under netem/ (or a path)")
    parser.add_argument("--netem-dir", default="netem", help="folder of the presets")
    parser.add_argument("--workers", type=int, default=None, help="worker count the run will use")


def main(args: argparse.Namespace) -> int:
    from .netem.preset import load_preset

    overrides = {} if args.workers is None else {"workers.count": args.workers}
    try:
        config = load_run_config(args.config, overrides)
        preset = load_preset(args.profile, Path(args.netem_dir))
        if config.mode == "ml":  # the PS would refuse to start with a rule that cannot hold for its window
            from .ps.server import rule_window

            rule_window(config)
    except ConfigError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {args.config} (mode {config.mode}, {config.workers.count} workers, digest {config.digest()}); "
          f"preset {preset.name}")
    return 0
