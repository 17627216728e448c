"""`dist-llm-train check`: validate a run config and a WAN preset, then exit.

`make up` runs this in a throwaway container before any service starts, so a bad file is
refused with its name and field and nothing is left half-started. It also checks that the host's
kernel lets a container use the TCP congestion control the preset asks for (netem/tcp.py): when it
does not, it stops with the one host command that allows it (exit 3), rather than let the sidecar
fail later or a container silently keep the host's default.
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
    parser.add_argument("--tcp-cc", choices=("cubic", "bbr", "reno", "host"), default=None,
                        help="TCP_CC: the congestion control of every container, whatever the preset says")


def main(args: argparse.Namespace) -> int:
    from .netem import tcp
    from .netem.preset import load_preset

    overrides = {} if args.workers is None else {"workers.count": args.workers}
    try:
        config = load_run_config(args.config, overrides)
        preset = load_preset(args.profile, Path(args.netem_dir), args.tcp_cc)
        if config.mode == "ml":  # the PS would refuse to start with a rule that cannot hold for its window
            from .ps.server import rule_window

            rule_window(config)
    except ConfigError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    problem = tcp.preset_problem(preset)
    if problem is not None:
        print(f"refused: {problem}", file=sys.stderr)
        return 3
    print(f"ok: {args.config} (mode {config.mode}, {config.workers.count} workers, digest {config.digest()}); "
          f"preset {preset.name}, TCP {'+'.join(sorted(preset.tcp_choices())) or 'host'}")
    return 0
