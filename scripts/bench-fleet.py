#!/usr/bin/env python3
"""Fleet mode, measured: a real 3-member etcd (Debian's etcd-server) and three orchestrators on loopback, each
with a local service and the singleton `scheduler`, at the default lease (10 s unless given).

Prints, per node, the etcd traffic of one steady minute (calls, bytes sent and received, from the node's own
counters), then the fail-over time of the singleton, from the moment its leader is SIGKILLed (or SIGSTOPped)
to the first instant a new instance runs on another node (/proc sampled every 20 ms; at most one instance is
ever alive, checked at every sample). A killed node is started again after each round, so every round starts
from three nodes.

Usage: scripts/bench-fleet.py [--binary target/release/fog-orchestrator] [--lease 10] [--rounds 5]
"""

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait(condition, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def instances(marker):
    wanted = f"sleep\0{marker}\0".encode()
    alive = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() != wanted:
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        alive.append(int(pid))
    return alive


def sample(metrics, series):
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


class Fleet:
    def __init__(self, binary, lease):
        self.dir = tempfile.mkdtemp(prefix="fog-bench-fleet-")
        self.binary, self.lease = binary, lease
        self.marker = f"{random.randint(5000, 5999)}.{random.randint(0, 999999)}"
        self.etcd = []
        peers = [(f"m{i}", free_port(), free_port()) for i in range(3)]
        initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in peers)
        for name, client, peer in peers:
            self.etcd.append(subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", os.path.join(self.dir, name),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, f"{name}.log"), "w")))
        self.endpoints = ", ".join(f'"http://127.0.0.1:{client}"' for _, client, _ in peers)
        for _, client, _ in peers:
            wait(lambda: '"health":"true"' in get(f"http://127.0.0.1:{client}/health").replace(" ", ""), 30, "etcd")
        self.nodes = {}
        for node in ["a", "b", "c"]:
            self.start(node)

    def start(self, node):
        port = free_port()
        path = os.path.join(self.dir, f"{node}.toml")
        with open(path, "w") as f:
            f.write(f'[cluster]\netcd_endpoints = [{self.endpoints}]\nname = "bench"\nnode = "{node}"\n'
                    f'lease_ttl = "{self.lease}s"\n'
                    f'[services.local]\ncommand = ["sleep", "3600"]\n'
                    f'[services.scheduler]\ncommand = ["sleep", "{self.marker}"]\nsingleton = true\n')
        process = subprocess.Popen(
            [self.binary, "run", "--config", path, "--listen", f"127.0.0.1:{port}", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, f"{node}.log"), "a"))
        api = f"http://127.0.0.1:{port}"
        wait(lambda: get(api + "/healthz"), 30, f"node {node}")
        self.nodes[node] = (process, api)

    def leader(self):
        for node, (_, api) in self.nodes.items():
            if '"leader":true' in get(api + "/api/orchestration/service/scheduler").replace(" ", ""):
                return node
        return None

    def stop(self):
        for process, _ in self.nodes.values():
            process.send_signal(signal.SIGCONT)
            process.terminate()
        for process, _ in self.nodes.values():
            process.wait()
        for member in self.etcd:
            member.kill()


def failover(fleet, how):
    wait(lambda: len(instances(fleet.marker)) == 1 and fleet.leader(), 60, "one running singleton")
    leader = fleet.leader()
    old = instances(fleet.marker)[0]
    process, _ = fleet.nodes[leader]
    began = time.monotonic()
    process.send_signal(how)
    while True:
        alive = instances(fleet.marker)
        if len(alive) > 1:
            raise SystemExit(f"two live instances: {alive}")
        if any(pid != old for pid in alive):
            took = time.monotonic() - began
            break
        if time.monotonic() - began > 10 * fleet.lease:
            raise SystemExit("the singleton never moved")
        time.sleep(0.02)
    if how == signal.SIGSTOP:
        process.send_signal(signal.SIGCONT)
        # The resumed node stands by; let it settle before the next round.
        wait(lambda: len(instances(fleet.marker)) == 1, 30, "one instance after resuming")
    else:
        process.wait()
        del fleet.nodes[leader]
        fleet.start(leader)
    return leader, took


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "fog-orchestrator"))
    parser.add_argument("--lease", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fleet = Fleet(args.binary, args.lease)
    try:
        wait(lambda: len(instances(fleet.marker)) == 1, 60, "the singleton")
        time.sleep(args.lease)
        names = ["orchestrator_cluster_requests_total{result=\"ok\"}", "orchestrator_cluster_sent_bytes_total",
                 "orchestrator_cluster_received_bytes_total"]
        before = {node: get(api + "/metrics") for node, (_, api) in fleet.nodes.items()}
        started = time.monotonic()
        time.sleep(60)
        after = {node: get(api + "/metrics") for node, (_, api) in fleet.nodes.items()}
        minutes = (time.monotonic() - started) / 60
        print(f"etcd traffic per node per minute (lease_ttl {args.lease} s, 2 services each, load average "
              f"{os.getloadavg()[0]:.2f}):")
        print("| node | calls | bytes sent | bytes received |\n|---|---|---|---|")
        for node in fleet.nodes:
            figures = [(sample(after[node], n) - sample(before[node], n)) / minutes for n in names]
            print(f"| {node} | {figures[0]:.0f} | {figures[1]:.0f} | {figures[2]:.0f} |")
        print()
        print(f"fail-over: leader signalled → a new instance runs on another node (lease_ttl {args.lease} s):")
        print("| round | signal | from | seconds |\n|---|---|---|---|")
        times = {signal.SIGKILL: [], signal.SIGSTOP: []}
        for round in range(args.rounds):
            for how in [signal.SIGKILL, signal.SIGSTOP]:
                node, took = failover(fleet, how)
                times[how].append(took)
                print(f"| {round + 1} | {how.name} | {node} | {took:.2f} |", flush=True)
        for how, values in times.items():
            values.sort()
            print(f"{how.name}: median {values[len(values) // 2]:.2f} s, min {values[0]:.2f} s, "
                  f"max {values[-1]:.2f} s over {len(values)} rounds")
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
