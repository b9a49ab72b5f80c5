#!/usr/bin/env python3
"""Records, from a real fleet, the series the fleet alert rules read, and writes their promtool unit tests
(alerts/tests/fleet.test.yml).

The run: a real etcd (Debian's etcd-server) and two orchestrators, nodes a and b, each with a local service
and the singleton `scheduler`, lease_ttl 2 s. At second 10 etcd is killed: both nodes lose their lease and
the singleton stops everywhere. At second 50 etcd is started again on the same data: the nodes come back
and one of them runs the singleton again. At second 70 the leader stops the singleton on request: it gives
the election up and the other node takes it over within a lease. At second 90 the recording ends.

Both nodes' /metrics are scraped every second. The lease is 5 times shorter than the default (10 s), so the
series are replayed at a 5 s interval: the same run at the default lease. Every value is what the engine
exported.

The expectations are hand-written below from the schedule and the rules' meaning, never derived from the
recording.

Usage: scripts/record-fleet-alert-series.py [path/to/fog-orchestrator]  (default target/debug/fog-orchestrator;
takes about 100 seconds; then run `promtool test rules alerts/tests/fleet.test.yml`).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("recorder", os.path.join(ROOT, "scripts", "record-alert-series.py"))
recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorder)

BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "fog-orchestrator")
OUT = os.path.join(ROOT, "alerts", "tests", "fleet.test.yml")
SCALE = 5  # one recorded second is 5 s of rule time (lease 2 s recorded, 10 s replayed)
RUN = 90
JOB = "fog-orchestrator"
NODES = ["a", "b"]
FAMILIES = {
    "orchestrator_cluster_up",
    "orchestrator_cluster_nodes",
    "orchestrator_singleton_leader",
    "orchestrator_service_state",
}


def instance(node):
    return f"{node}:8400"


def parse(text):
    samples = {}
    for line in text.splitlines():
        found = recorder.SAMPLE.match(line)
        if found and found.group(1) in FAMILIES:
            samples[found.group(1) + (found.group(2) or "{}")] = float(found.group(3))
    return samples


def start_etcd(dir, client, peer):
    return subprocess.Popen(
        ["etcd", "--name", "m0", "--data-dir", os.path.join(dir, "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"m0=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir, "etcd.log"), "a"),
    )


def wait_http(url):
    for _ in range(200):
        try:
            recorder.http("GET", url)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def record():
    if shutil.which("etcd") is None:
        raise SystemExit("etcd is not installed (apt-get install etcd-server)")
    dir = tempfile.mkdtemp(prefix="fog-fleet-record-")
    client, peer = recorder.free_port(), recorder.free_port()
    etcd = start_etcd(dir, client, peer)
    wait_http(f"http://127.0.0.1:{client}/health")
    apis, processes = {}, []
    for node in NODES:
        port = recorder.free_port()
        path = os.path.join(dir, f"{node}.toml")
        with open(path, "w") as f:
            f.write(
                f'[cluster]\netcd_endpoints = ["http://127.0.0.1:{client}"]\nname = "record"\nnode = "{node}"\n'
                f'lease_ttl = "2s"\n'
                f'[services.local]\ncommand = ["sleep", "3600"]\n'
                f'[services.scheduler]\ncommand = ["sleep", "3600"]\nsingleton = true\nshutdown.timeout = "1s"\n'
            )
        processes.append(subprocess.Popen(
            [BINARY, "run", "--config", path, "--listen", f"127.0.0.1:{port}", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir, f"{node}.log"), "w"),
        ))
        apis[node] = f"http://127.0.0.1:{port}"
        wait_http(apis[node] + "/healthz")

    def stop_leader():
        for node, api in apis.items():
            if '"leader":true' in recorder.http("GET", api + "/api/orchestration/service/scheduler").replace(" ", ""):
                recorder.http("POST", api + "/api/orchestration/stop/scheduler", {})
                return

    state = {"etcd": etcd}

    def restart_etcd():
        state["etcd"] = start_etcd(dir, client, peer)

    schedule = {10: lambda: state["etcd"].kill(), 50: restart_etcd, 70: stop_leader}
    scrapes, start = [], time.time()
    for second in range(RUN + 1):
        time.sleep(max(0.0, start + second - time.time()))
        if second in schedule:
            schedule[second]()
        scrape = {}
        for node, api in apis.items():
            for key, value in parse(recorder.http("GET", api + "/metrics")).items():
                name, labels = key.split("{", 1)
                inner = labels.rstrip("}")
                target = f'job="{JOB}",instance="{instance(node)}"'
                scrape[f"{name}{{{target}{',' if inner else ''}{inner}}}"] = value
        scrapes.append(scrape)
        print(f"\rrecorded {second + 1}/{RUN + 1} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for process in processes:
        process.terminate()
        process.wait()
    state["etcd"].kill()
    return scrapes


def values(scrapes):
    keys = sorted({key for scrape in scrapes for key in scrape})
    return {key: [f"{scrape[key]:g}" if key in scrape else "_" for scrape in scrapes] for key in keys}


def alert(name, labels, severity, summary, description):
    return {"labels": {"job": JOB, **labels, "severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": recorder.RUNBOOK + name.lower()}}


def cluster_down(node):
    return alert(
        "OrchestratorClusterDown", {"instance": instance(node)}, "warning",
        f"fog-orchestrator {instance(node)} lost etcd",
        f"{instance(node)} has held no etcd lease for a minute (etcd unreachable or the node cut off): it keeps "
        "supervising its own services, but it is missing from the fleet views and cannot run singletons.")


def expectations():
    """(eval time in recorded seconds, alert, expected alerts), from the schedule."""
    not_running = alert(
        "OrchestratorSingletonNotRunning", {"service": "scheduler"}, "critical",
        "Singleton scheduler is not running anywhere",
        "No node of the fleet has run the singleton scheduler for 2 minutes: no node holds its election (etcd "
        "lost, every node stopped it or it failed everywhere) or its leader cannot start it.")
    return [
        # Before the outage: one node leads and runs it.
        (8, "OrchestratorClusterDown", []),
        (8, "OrchestratorSingletonNotRunning", []),
        # etcd gone at 10: a minute (12 recorded s) later both nodes page; the singleton after 2 minutes.
        (20, "OrchestratorClusterDown", []),
        (45, "OrchestratorClusterDown", [cluster_down(node) for node in NODES]),
        (45, "OrchestratorSingletonNotRunning", [not_running]),
        # etcd back at 50: all clear well within the minute.
        (60, "OrchestratorClusterDown", []),
        (60, "OrchestratorSingletonNotRunning", []),
        # The leader's stop at 70 hands the singleton over within a lease: no page.
        (RUN, "OrchestratorSingletonNotRunning", []),
        (RUN, "OrchestratorClusterDown", []),
    ]


def write(series, tests):
    lines = [
        "# Unit tests of the fleet alerts in alerts/orchestrator.rules.yml:",
        "#   promtool test rules alerts/tests/fleet.test.yml",
        "#",
        "# GENERATED by scripts/record-fleet-alert-series.py: the input series were recorded from a real fleet",
        "# (etcd and two orchestrators, etcd killed and started again, the singleton's leader stopping it), both",
        f"# nodes scraped every second with a lease {SCALE}x shorter than the default, replayed at a {SCALE}s",
        "# interval. The expectations are hand-written in the script from its schedule.",
        "rule_files:",
        "  - ../orchestrator.rules.yml",
        f"evaluation_interval: {SCALE}s",
        "tests:",
        "  - name: a recorded fleet losing etcd and handing its singleton over",
        f"    interval: {SCALE}s",
        "    input_series:",
    ]
    lines.extend(recorder.test_body(series, tests, SCALE))
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    scrapes = record()
    series = values(scrapes)
    write(series, expectations())
    print(f"wrote {OUT}: {len(series)} series, {len(scrapes)} samples each", file=sys.stderr)


if __name__ == "__main__":
    main()
