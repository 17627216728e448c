"""TCP congestion control through the real stack: the preset's choice is in force in each container's
namespace, and it decides what one flow gets on a lossy link.

`make up PROFILE=tcp_mix`, as a user types it: every container 15 ms and 2.5 % loss, and worker 1 bbr
where the others use cubic; `make verify` prints what is in force. One TCP flow from each worker to the
controller is then sent by a throwaway container that joins
the worker's namespace (so it inherits the namespace's default algorithm, as every process there does,
and the sidecar is not its own judge). Mathis' bound for one loss-based flow is 3.0 Mbit/s there:
cubic stays within 3x of it, bbr (which ignores random loss) goes well past it.
"""

from __future__ import annotations

import json

from dist_llm_train.netem.tcp import mathis_mbit

from .test_netem_e2e import IMAGE, Prober, address, docker

SINK_PORT = 7301
SECONDS = 8.0


def test_the_presets_congestion_control_is_in_force_and_decides_lossy_throughput(make_stack):
    stack = make_stack(config="configs/basic_demo.yaml", profile="tcp_mix", workers=2)
    stack.make("up")
    status = stack.wait_for(lambda s: s["run"]["state"] != "waiting", 180, "the links of tcp_mix to be ready")
    links = status["links"]
    assert links["ready"] and links["healthy"] and links["tcp_cc"] == "bbr+cubic", links
    controller = stack.containers("controller")[0]
    workers = {docker("inspect", "-f", "{{.Name}}", c).strip("/\n"): c for c in stack.containers("worker")}
    in_force = {name: entry["tcp_in_force"]["congestion_control"] for name, entry in links["containers"].items()}
    assert in_force == {f"{stack.project}-controller-1": "cubic", f"{stack.project}-worker-1": "cubic",
                        f"{stack.project}-worker-2": "bbr"}, in_force

    verify = stack.make("verify", timeout=300, check=False)
    for name, cc in in_force.items():  # its verdicts on RTT and loss are the netem tests' business
        assert f"  {name}: {cc} (preset: {cc}); rmem " in verify.stdout, verify.stdout + verify.stderr
    assert "TCP Mathis bound up / down" in verify.stdout, verify.stdout

    prober = Prober()
    try:
        sink = f"{stack.project}-sink"
        docker("run", "-d", "--rm", "--name", sink, "--network", f"container:{controller}", IMAGE,
               "python3", "-m", "dist_llm_train.netem.traffic", "tcp-sink", "--port", str(SINK_PORT))
        prober.helpers.append(sink)
        stack.compose("pause", "worker")  # the run's own traffic stays out of the measured links
        flows = {}
        for name in sorted(workers):
            out = prober.in_netns(workers[name], "python3", "-m", "dist_llm_train.netem.traffic", "tcp-send",
                                  "--host", address(controller), "--port", str(SINK_PORT), "--seconds", str(SECONDS),
                                  "--warmup", "2", timeout=120)
            flows[name] = json.loads(out)
    finally:
        stack.compose("unpause", "worker", check=False)
        prober.close()

    bound = mathis_mbit(30.0, 2.5)  # data meets one 2.5 % loss point, the ACKs another
    cubic, bbr = flows[f"{stack.project}-worker-1"], flows[f"{stack.project}-worker-2"]
    print(f"one flow, 30 ms RTT, 2.5 % loss each way: cubic {cubic['mbit']:.2f} Mbit/s, bbr {bbr['mbit']:.2f} "
          f"Mbit/s; Mathis bound {bound:.2f}")
    assert (cubic["congestion_control"], bbr["congestion_control"]) == ("cubic", "bbr")
    assert bound / 3 <= cubic["mbit"] <= 3 * bound, cubic
    assert bbr["mbit"] >= 5 * bound and bbr["mbit"] >= 3 * cubic["mbit"], bbr
