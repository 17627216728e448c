"""WAN emulation through the real compose stack, on whatever backend `auto` picks here (userspace
on a kernel without sch_netem).

Measurements are taken two ways: by the sidecar itself (its first fidelity probe, reported to the
controller's /status before the run starts) and independently, by probe processes this test starts
in the containers' own network namespaces (`docker run --network container:<id>`), so the sidecar
is not its own judge. Basic mode with one worker and the 40-task demo keeps the stack up for about
a minute after the links are ready. The profile change goes through `make up`, as users type it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from .stack import Stack

IMAGE = os.environ.get("IMAGE", "dist-llm-train:dev")
CONFIG = "configs/basic_demo.yaml"
ECHO_PORT = 7300


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def address(container: str) -> str:
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).strip()


class Prober:
    """Echo servers and probes run as throwaway containers inside the stack's namespaces."""

    def __init__(self):
        self.helpers: list[str] = []

    def in_netns(self, container: str, *argv: str, timeout: float = 120) -> str:
        return docker("run", "--rm", "--network", f"container:{container}", "--cap-add", "NET_ADMIN", IMAGE, *argv,
                      timeout=timeout)

    def echo(self, container: str) -> None:
        name = f"dlt-e2e-echo-{uuid.uuid4().hex[:8]}"
        docker("run", "-d", "--rm", "--name", name, "--network", f"container:{container}", IMAGE,
               "python3", "-m", "dist_llm_train.netem.traffic", "udp-echo", "--port", str(ECHO_PORT))
        self.helpers.append(name)
        time.sleep(1.5)  # python start-up; probes sent earlier would count as lost

    def rtts(self, source: str, target_ip: str, count: int, interval_s: float) -> list[float | None]:
        out = self.in_netns(source, "python3", "-m", "dist_llm_train.netem.traffic", "udp-probe", "--host", target_ip,
                            "--port", str(ECHO_PORT), "--count", str(count), "--interval", str(interval_s),
                            "--size", "16", "--samples", timeout=60 + count * interval_s)
        return json.loads(out)["rtts_ms"]

    def close(self) -> None:
        for name in self.helpers:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture
def prober():
    p = Prober()
    yield p
    p.close()


def up_and_ready(make_stack, profile: str) -> tuple[Stack, dict]:
    stack = make_stack(config=CONFIG, profile=profile, workers=1)
    stack.up()
    status = stack.wait_for(lambda s: s["run"]["state"] != "waiting", 120, f"the links of {profile} to be ready")
    assert status["links"]["ready"] and status["links"]["healthy"], status["links"]
    return stack, status


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def rules_left(prober: Prober, container: str) -> list[str]:
    """Our rules still in a container's namespace: the htb, the ingress qdisc, the ifb, NFQUEUE."""
    out = prober.in_netns(container, "sh", "-c", "tc qdisc show dev eth0; ip -o link show; "
                                                 "iptables-nft -t mangle -S PREROUTING")
    return [line for line in out.splitlines() if any(k in line for k in ("htb", "ingress", "dlt-ifb", "NFQUEUE"))]


def test_high_rtt_adds_its_delay_over_lan_and_stop_removes_every_rule(make_stack, prober):
    # Prepare: the same stack under lan, then under high_rtt (every container 50 ms one-way).
    medians = {}
    for profile in ("lan", "high_rtt"):
        stack, status = up_and_ready(make_stack, profile)
        worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
        # Execute: 500 paced echoes worker -> controller, from inside the worker's namespace.
        prober.echo(controller)
        rtts = [r for r in prober.rtts(worker, address(controller), 500, 0.004) if r is not None]
        medians[profile] = median(rtts)
        assert len(rtts) >= 495, f"{profile}: {500 - len(rtts)} of 500 echoes lost"
        if profile == "high_rtt":
            # The sidecar's own probe agrees (medians here and below: on a loaded 2-core host a
            # stalled Python process can hold a few echoes for 100s of ms and drag a mean).
            probe = status["links"]["probe"]
            assert abs(probe["rtt_p50_ms"] - 100) <= 10 and probe["expected"]["rtt_ms"] == 100, probe
            # `make verify` measures the same pair: its loss verdict must hold, and its RTT median.
            # (Its mean and jitter verdicts are what a quiet host is judged on: `make bench-netem`.)
            verify = stack.compose("exec", "-T", "netem", "dist-llm-train", "verify", "--profile", "high_rtt",
                                   "--json", check=False, timeout=180)
            assert verify.returncode in (0, 1), verify.stdout + verify.stderr
            report = json.loads(verify.stdout)
            print(json.dumps(report["results"], indent=1))
            assert report["problems"] == [] and len(report["results"]) == 1
            result = report["results"][0]
            assert abs(result["measured"]["rtt_p50_ms"] - 100) <= 10 and result["verdict"]["loss_pct"], result
            # Stopping the sidecar removes every rule from the containers that are still running.
            assert rules_left(prober, controller) and rules_left(prober, worker)
            assert len(stack.helpers()) == len(stack.containers("worker")) + 1  # one per container it shapes
            stack.compose("stop", "netem", timeout=60)
            assert rules_left(prober, controller) == [] and rules_left(prober, worker) == []
            assert "cleanup done" in stack.logs("netem") and stack.helpers() == []
        stack.down()
    # Assert: RTT up by d_worker + d_controller = 100 ms, within max(10 %, 2 ms).
    added = medians["high_rtt"] - medians["lan"]
    assert abs(added - 100) <= 10, medians


@pytest.mark.parametrize("profile, check", [
    ("lossy", lambda p: 1.0 <= p["loss_pct"] <= 3.0),  # 2 % round trip
    ("low_bandwidth", lambda p: 0.85 * 5 <= p["mbit_up"] <= 1.05 * 5 and 0.85 * 5 <= p["mbit_down"] <= 1.05 * 5),
])
def test_loss_and_rate_presets_take_effect(make_stack, profile, check):
    stack, status = up_and_ready(make_stack, profile)
    probe = status["links"]["probe"]
    assert check(probe), probe
    assert status["links"]["backend"] in ("netem", "userspace")
    stack.down()


def test_brownout_outages_last_the_configured_5_s(make_stack, prober):
    # brownout: every worker's link down from t = 15 s to 20 s after the run starts (t = 0 at ready).
    stack, status = up_and_ready(make_stack, "brownout")
    worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
    prober.echo(controller)
    interval = 0.02
    rtts = prober.rtts(worker, address(controller), 1300, interval)  # 26 s of echoes, over t = ~5..31 s
    # The longest run of lost echoes is the outage.
    longest = current = 0
    for r in rtts:
        current = current + 1 if r is None else 0
        longest = max(longest, current)
    outage_s = longest * interval
    lost_elsewhere = sum(r is None for r in rtts) - longest
    assert 4.6 <= outage_s <= 5.5, outage_s
    assert lost_elsewhere <= 5, lost_elsewhere  # outside the outage the link is the loss-free good WAN
    assert "outage" in stack.logs("netem")
    stack.down()


def test_killing_the_sidecar_leaves_no_container_silently_unimpaired(make_stack, prober):
    stack, _ = up_and_ready(make_stack, "high_rtt")
    worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
    docker("kill", stack.containers("netem")[0])
    time.sleep(2)
    prober.echo(controller)
    rtts = prober.rtts(worker, address(controller), 200, 0.005)
    answered = [r for r in rtts if r is not None]
    # Either the rules stayed and still delay (netem backend, or a delayer that outlived the
    # sidecar), or the delayers died with it and the NFQUEUE rule black-holes the link: never an
    # unimpaired ~0.1 ms path.
    assert not answered or min(answered) >= 90, f"{len(answered)} answered, fastest {min(answered):.2f} ms"
    # And the controller says so: a silent sidecar degrades the running run.
    status = stack.wait_for(lambda s: s["run"]["degraded"], 60, "the run to be marked degraded")
    assert "sidecar" in status["run"]["degraded"]
    stack.down()


def test_a_crashed_sidecar_comes_back_reapplies_every_link_and_the_run_says_so(make_stack, prober):
    # A crash, not a deliberate stop: its process is killed outright, so compose's
    # `restart: unless-stopped` brings the container back (a `docker kill` would not).
    stack, _ = up_and_ready(make_stack, "high_rtt")
    worker, controller, netem = (stack.containers(s)[0] for s in ("worker", "controller", "netem"))
    pid = docker("inspect", "-f", "{{.State.Pid}}", netem).strip()
    # Its PID as the host sees it, killed from the host's PID namespace (the sidecar has a PID namespace of
    # its own, where its process is init and cannot be killed from inside): a crash, as an OOM kill would be.
    docker("run", "--rm", "--pid", "host", IMAGE, "sh", "-c", f"kill -9 {pid}")
    killed = time.monotonic()
    prober.echo(controller)
    back_after = None
    while back_after is None and time.monotonic() - killed < 30:
        rtts = [r for r in prober.rtts(worker, address(controller), 50, 0.005) if r is not None]
        if len(rtts) >= 45 and abs(median(rtts) - 100) <= 10:
            back_after = time.monotonic() - killed
    assert back_after is not None, f"the links were not 100 ms again within 30 s\n{stack.logs('netem')}"
    print(f"links delayed as the preset says again {back_after:.1f} s after the kill")
    assert int(docker("inspect", "-f", "{{.RestartCount}}", netem)) >= 1
    status = stack.wait_for(lambda s: s["run"]["degraded"] and any(
        "restarted" in p for p in (s["links"] or {}).get("problems") or []), 30, "the restart in the run's report")
    assert "sidecar" in status["run"]["degraded"]
    stack.down()


def test_a_restarted_container_gets_its_link_back(make_stack, prober):
    # A restart gives the container a new network namespace, without our rules: the sidecar sees
    # the Docker events and applies the link again.
    stack, _ = up_and_ready(make_stack, "high_rtt")
    worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
    # The sidecar shapes it through a helper in the worker's namespace, with NET_ADMIN and NET_RAW only;
    # the sidecar itself has neither the host PID namespace nor an added capability.
    (helper,) = stack.helpers(worker)
    worker_id = docker("inspect", "-f", "{{.Id}}", worker).strip()
    shape = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", helper))
    assert shape["NetworkMode"] == f"container:{worker_id}", shape["NetworkMode"]
    assert sorted(c.removeprefix("CAP_") for c in shape["CapAdd"]) == ["NET_ADMIN", "NET_RAW"], shape["CapAdd"]
    assert [c.removeprefix("CAP_") for c in shape["CapDrop"]] == ["ALL"] and not shape["Privileged"]
    sidecar = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", stack.containers("netem")[0]))
    assert sidecar["PidMode"] != "host" and not sidecar["CapAdd"] and not sidecar["Privileged"], sidecar
    docker("restart", "-t", "2", worker)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stack.logs("netem").count("(worker-0,") < 2:
        time.sleep(1)
    assert stack.logs("netem").count("(worker-0,") == 2, stack.logs("netem")
    assert rules_left(prober, worker), "no rule in the restarted worker's namespace"
    (new_helper,) = stack.helpers(worker)  # a new one for the new namespace; the old one removed
    assert new_helper != helper
    prober.echo(controller)
    rtts = [r for r in prober.rtts(worker, address(controller), 200, 0.005) if r is not None]
    assert len(rtts) >= 195 and abs(median(rtts) - 100) <= 10, median(rtts)
    stack.down()


def started(stack: Stack, service: str) -> list[str]:
    """Each running container of a service with its start time: a restarted one keeps its id."""
    return [docker("inspect", "-f", "{{.Id}} {{.State.StartedAt}}", c).strip() for c in stack.containers(service)]


def test_make_up_with_a_new_profile_reapplies_links_and_keeps_every_training_container(make_stack, prober):
    # Prepare: `make up PROFILE=lan MODE=ml WORKERS=1` with DiLoCo (minutes of training, so the PS
    # still serves at the change; 50 local steps between exchanges keep the links quiet while the
    # echoes run), then the worker -> controller RTT.
    stack = make_stack(config="configs/ml_diloco.yaml", profile="lan", workers=1, mode="ml")
    stack.make("up")
    stack.wait_for(lambda s: s["run"]["state"] == "running", 120, "the run to start under lan")
    token = stack.env_file.read_text()
    training = {service: started(stack, service) for service in ("controller", "ps", "worker")}
    worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
    prober.echo(controller)
    before = median([r for r in prober.rtts(worker, address(controller), 100, 0.005) if r is not None])

    # Execute: `make up PROFILE=high_rtt ...` on the running stack (PROFILE reaches only the sidecar).
    stack.profile = "high_rtt"
    stack.make("up")
    stack.wait_for(lambda s: (s["links"] or {}).get("profile") == "high_rtt" and s["links"]["ready"], 120,
                   "the sidecar to apply high_rtt")
    # 2 s of echoes: a stall of the delayers on a loaded host (a few 100 ms) cannot move the median.
    after = median([r for r in prober.rtts(worker, address(controller), 200, 0.01) if r is not None])
    print(f"RTT median worker -> controller: lan {before:.2f} ms, high_rtt {after:.2f} ms")

    # Assert: the token kept, private; the same training containers, never restarted, now 100 ms apart.
    assert stack.env_file.read_text() == token and stack.env_file.stat().st_mode & 0o777 == 0o600
    assert {service: started(stack, service) for service in training} == training
    assert all(len(ids) == 1 for ids in training.values()), training
    assert before < 5 and abs(after - 100) <= 10, (before, after)
    stack.make("down")
    assert stack.compose("ps", "-a", "-q").stdout.split() == [] and stack.helpers() == []


def test_a_dead_delayer_marks_the_run_and_is_restarted(make_stack, prober):
    stack, status = up_and_ready(make_stack, "high_rtt")
    if status["links"]["backend"] != "userspace":
        pytest.skip("the netem backend runs no delayer")  # never on the CI kernel, which has no sch_netem
    worker, controller = stack.containers("worker")[0], stack.containers("controller")[0]
    link_json = stack.runs_dir / status["run"]["id"] / "link.json"  # the sidecar's record of what it applied
    deadline = time.monotonic() + 30
    while not link_json.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    (entry,) = [link for link in json.loads(link_json.read_text())["links"].values() if link["role"] == "worker"]

    (helper,) = stack.helpers(worker)  # the delayer runs in the worker's helper; its pid is the helper's
    docker("exec", helper, "sh", "-c", f"kill -9 {entry['delayer']['pid']}")

    status = stack.wait_for(lambda s: s["run"]["degraded"], 60, "the run to be marked degraded")
    assert "delayer" in status["run"]["degraded"] and "died" in status["run"]["degraded"], status["run"]
    assert "delayer restarted" in stack.logs("netem")
    prober.echo(controller)
    rtts = [r for r in prober.rtts(worker, address(controller), 200, 0.005) if r is not None]
    assert len(rtts) >= 195 and abs(median(rtts) - 100) <= 10, median(rtts)  # delayed again, never bare
