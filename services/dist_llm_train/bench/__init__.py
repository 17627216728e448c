"""`dist-llm-train bench controller|netem|ps|tcp|trace|lighthouse`: run one benchmark and print its figures.

Each target is a module of this package exposing `configure(parser)` and `main(args)`, imported
only when chosen (the netem bench needs the Docker SDK, the PS bench torch; the controller
bench neither). Options after the target are the target's own: `dist-llm-train bench controller --help`.
"""

from __future__ import annotations

import argparse
import importlib

# target -> (module, one-line description)
TARGETS: dict[str, tuple[str, str]] = {
    "controller": ("dist_llm_train.bench.controller", "control-plane API latency and scheduling-cycle time"),
    "netem": ("dist_llm_train.bench.netem", "WAN emulation fidelity and cost per preset"),
    "ps": ("dist_llm_train.bench.ps", "parameter-server throughput, wire efficiency, time to target"),
    "trace": ("dist_llm_train.bench.trace", "does a traced link's throughput follow its trace (1 s buckets)"),
    "tcp": ("dist_llm_train.bench.tcp", "one TCP flow's goodput on lossy presets per congestion control, beside Mathis"),
    "lighthouse": ("dist_llm_train.bench.lighthouse", "Lighthouse scores of the report page (runs/report)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=TARGETS, help="; ".join(f"{k}: {v[1]}" for k, v in TARGETS.items()))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the target's options (see TARGET --help)")


def main(args: argparse.Namespace) -> int:
    module_name, description = TARGETS[args.target]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dist-llm-train bench {args.target}", description=description)
    module.configure(parser)
    return int(module.main(parser.parse_args(args.options)) or 0)
