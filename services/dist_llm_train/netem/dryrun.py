"""`dist-llm-train netem --dry-run`: the exact commands for every container of a preset, without Docker."""

from __future__ import annotations

import json

from . import tcp
from .backends.base import Backend
from .backends.userspace import delayer_argv
from .helpers import LINKS_DIR
from .nslink import link_text
from .preset import Preset


def dry_run(preset: Preset, backend: Backend, why: str, workers: int, with_ps: bool) -> None:
    print(f"# {why}")
    print(f"# preset {preset.name} ({preset.source}): {preset.description}")
    containers = [("controller", 0)] + ([("ps", 0)] if with_ps else []) + [("worker", i) for i in range(workers)]
    for role, index in containers:
        label = role if role != "worker" else f"worker-{index}"
        link = preset.link_at(role, index, 0.0)
        print(f"\n## {label}: {link_text(link)}")
        print(f"# TCP congestion control {link.tcp.congestion_control}, in {label}'s network namespace:")
        for argv in tcp.commands(link.tcp) or [("# (host: nothing set; the inherited default is recorded)",)]:
            print(" ".join(argv))
        if all(l.is_identity for l in preset.links_over_time(role, index)):
            print("# nothing to install")
            continue
        print(f"# apply, in {label}'s network namespace (by its helper container's agent):")
        spec = backend.delayer_spec(link)
        if spec is not None:
            print(f"# first, the delayer, with spec file {json.dumps(spec)}:")
            print(" ".join(delayer_argv("python3", f"{LINKS_DIR}/{label}.spec.json", f"{LINKS_DIR}/{label}.stats.json", 0)))
        for argv in backend.apply(link):
            print(" ".join(argv))
        print("# remove:")
        for argv in backend.remove():
            print(" ".join(argv))
    t, shown = 0.0, 0
    while shown < 4 and (t := preset.next_change(t)) is not None:
        print(f"\n## t = {t:g} s (phases active: {', '.join(preset.phases_active(t)) or 'none'})")
        for role, index in containers:
            before, after = preset.link_at(role, index, t - 1e-6), preset.link_at(role, index, t)
            if before != after:
                label = role if role != "worker" else f"worker-{index}"
                print(f"# {label}: {link_text(after)}")
                for argv in backend.change(after, before):
                    print(" ".join(argv))
        shown += 1
