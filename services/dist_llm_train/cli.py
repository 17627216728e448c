"""`dist-llm-train <command>`: one entry point, the role is the command.

Each command lives in its own module, imported only when chosen, so that a basic-mode worker
never pays for importing torch. A command module exposes `configure(parser)` and
`main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name used on the command line -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "controller": ("dist_llm_train.controller.main", "run the controller (HTTP control plane)"),
    "worker": ("dist_llm_train.worker.main", "run one worker (basic or ML mode, from the config)"),
    "ps": ("dist_llm_train.ps.main", "run the parameter server (ZeroMQ data plane)"),
    "netem": ("dist_llm_train.netem.sidecar", "run the WAN emulation sidecar"),
    "netem-agent": ("dist_llm_train.netem.agent", "run commands in one container's namespace for the sidecar"),
    "verify": ("dist_llm_train.netem.verify", "measure the emulated links and compare with the preset"),
    "check": ("dist_llm_train.check", "validate a run config and a WAN preset, then exit"),
    "demo-basic": ("dist_llm_train.demo", "basic-mode run as local processes on loopback"),
    "demo-ml": ("dist_llm_train.demo", "ML-mode run as local processes on loopback"),
    "run-experiments": ("dist_llm_train.experiments.runner", "run an experiment matrix through compose"),
    "report": ("dist_llm_train.experiments.report", "build tables and plots from runs/"),
    "bench": ("dist_llm_train.bench", "run a benchmark and print its figures"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-llm-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)
