#!/usr/bin/env python3
"""Chaos soak: the FOG demo under a hostile mix of faults, checked throughout.

Every 2 s one fault, chosen at random: SIGKILL of a service's process, SIGSTOP of one (a hang), a
demo-service /fault (unhealthy, hang or crash), a dependency killed (cascade), five concurrent API
restarts of one service, a registered service that stops heartbeating, a restart of a service that forks
escaping setsid daemons, a configuration reload (alternately adding a service and changing the forker's
environment, and taking both back). Every second it checks: the orchestrator answers (latency of a sampled GET), no
zombies, no orphans (processes of this run outside the orchestrator's tree, found by a marker in their
command line), file descriptors and memory flat, no service stuck in starting or stopping. At the end:
restart counters at least the restarts the faults forced, the services those of the last configuration
applied (a removed service's process gone), and a final SIGTERM that leaves nothing behind.

Usage: scripts/chaos.py [minutes] (default 2). Exits non-zero on any violation; prints the figures.
"""

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "debug", "fog-orchestrator")
DEMO = ["dao", "scheduler", "edge", "fog_coordinator", "harvest", "onion", "p2p", "vpn_coordinator",
        "betanet", "bitchat"]
STUCK_AFTER = 60.0  # seconds in starting or stopping that count as stuck


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def http(method, url, body=None, timeout=10.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def processes():
    """pid -> (ppid, state, cmdline) for every process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(name)] = (int(fields[1]), fields[0], cmdline)
    return found


def descendants(root, table):
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def main():
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20261130")))
    work = tempfile.mkdtemp(prefix="fog-chaos-")
    marker = f"fog-chaos-{os.getpid()}"
    state_dir = os.path.join(work, marker)
    os.makedirs(state_dir)

    config = open(os.path.join(ROOT, "examples", "fog.toml")).read()
    ports = free_ports(10)
    for offset, port in enumerate(ports):
        config = config.replace(f"127.0.0.1:{7100 + offset}", f"127.0.0.1:{port}")
    config = config.replace('"demo-service",', f'"demo-service", "--state-dir", "{state_dir}",')
    # Faster cadences than the demo's, through the environment layer (the file has these tables already).
    environment = dict(os.environ)
    environment.update({
        "ORCHESTRATOR__DEFAULTS__HEALTH__CHECK_INTERVAL": "1s",
        "ORCHESTRATOR__DEFAULTS__HEALTH__TIMEOUT": "500ms",
        "ORCHESTRATOR__DEFAULTS__RESTART__INITIAL_DELAY": "200ms",
        "ORCHESTRATOR__DEFAULTS__RESTART__MAX_ATTEMPTS": "1000",
        "ORCHESTRATOR__DEFAULTS__SHUTDOWN__TIMEOUT": "2s",
        "ORCHESTRATOR__REGISTRY__HEARTBEAT_INTERVAL": "1s",
        "ORCHESTRATOR__REGISTRY__HEARTBEAT_TIMEOUT": "3s",
    })
    config += f"""
[services.forker]
command = ["sh", "-c", "setsid sleep 86400.{os.getpid()} & setsid sh -c 'trap \\"\\" TERM; exec sleep 86401.{os.getpid()}' & exec sleep 86402.{os.getpid()}"]
"""
    # A marker in every process of this run: the state dir is in each demo's command line, the forker's
    # sleeps carry this script's pid.
    path = os.path.join(work, "orchestrator.toml")
    with open(path, "w") as f:
        f.write(config)
    # The reload fault's other version: one more service, and the forker started with another environment.
    spare = f"sleep 86403.{os.getpid()}"
    reloaded = config.replace("[services.forker]\n", "[services.forker]\nenv = { RELOADED = \"1\" }\n") + f"""
[services.spare]
command = ["sleep", "86403.{os.getpid()}"]
"""
    versions = {"original": config, "reloaded": reloaded}
    applied = {"version": "original", "busy": False, "applied": 0, "refused": 0}
    log = open(os.path.join(work, "orchestrator.log"), "w")
    orchestrator = subprocess.Popen([BINARY, "run", "--config", path, "--listen", "127.0.0.1:0",
                                     "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=log,
                                    env=environment)
    api = None
    for _ in range(300):
        time.sleep(0.1)
        for line in open(log.name):
            if '"API listening' in line:
                api = "http://" + json.loads(line)["fields"]["address"]
        if api and http("GET", api + "/readyz")[0] == 200:
            break
    if not api:
        print("chaos: the orchestrator did not start")
        return 1

    def ours(cmdline):
        return marker in cmdline or f"{os.getpid()}" in cmdline and cmdline.startswith("sleep 8640")

    violations = []
    latencies = []
    rss, fds = [], []
    faults = {}
    forced = {name: 0 for name in DEMO}
    stuck_since = {}
    stop = threading.Event()

    def check():
        while not stop.is_set():
            started = time.monotonic()
            status, body = http("GET", api + "/api/orchestration/services", timeout=5)
            latencies.append(time.monotonic() - started)
            if status != 200:
                violations.append(f"GET /services answered {status}")
            else:
                services = json.loads(body)["services"]
                now = time.monotonic()
                for name, service in services.items():
                    if service["status"] in ("starting", "stopping"):
                        since = stuck_since.setdefault(name, now)
                        if now - since > STUCK_AFTER:
                            violations.append(f"{name} stuck in {service['status']} for {now - since:.0f} s")
                    else:
                        stuck_since.pop(name, None)
            table = processes()
            tree = descendants(orchestrator.pid, table)
            zombies = [pid for pid in tree if table[pid][1] == "Z"]
            for pid in zombies:
                # A process may be a zombie for a moment before its parent reaps it: look again.
                time.sleep(0.2)
                try:
                    if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                        violations.append(f"zombie {pid}: {table[pid][2][:80]}")
                except OSError:
                    pass
            orphans = [pid for pid, (_, _, cmdline) in table.items() if ours(cmdline) and pid not in tree]
            if orphans:
                # A service whose shim was just killed is outside the tree for the moment its PID namespace
                # takes to die with it: an orphan is one still outside a moment later.
                time.sleep(0.5)
                table = processes()
                tree = descendants(orchestrator.pid, table)
                orphans = [pid for pid in orphans if pid in table and ours(table[pid][2]) and pid not in tree]
            for pid in orphans:
                violations.append(f"orphan {pid} outside the orchestrator's tree: {table[pid][2][:80]}")
            try:
                status_text = open(f"/proc/{orchestrator.pid}/status").read()
                rss.append(int(status_text.split("VmRSS:")[1].split()[0]))
                fds.append(len(os.listdir(f"/proc/{orchestrator.pid}/fd")))
            except OSError:
                violations.append("the orchestrator is gone")
                return
            stop.wait(1.0)

    def pid_of(name):
        status, body = http("GET", f"{api}/api/orchestration/services")
        if status != 200:
            return None
        service = json.loads(body)["services"].get(name, {})
        return service.get("pid") if service.get("status") == "running" else None

    def demo_port(name):
        return ports[DEMO.index(name)]

    def kill(name, sig):
        pid = pid_of(name)
        try:
            os.kill(pid, sig)
            return True
        except (TypeError, OSError):
            return False

    def signal_group(pid, sig):
        try:
            os.killpg(pid, sig)
        except OSError:
            pass

    def fault(kind):
        name = rng.choice(DEMO)
        faults[kind] = faults.get(kind, 0) + 1
        if kind == "sigkill":
            if kill(name, signal.SIGKILL):
                forced[name] += 1
        elif kind == "sigstop":
            # The shim stops; the service behind it keeps answering, so stop the whole group.
            pid = pid_of(name)
            if pid:
                signal_group(pid, signal.SIGSTOP)
                threading.Timer(3.0, signal_group, args=(pid, signal.SIGCONT)).start()
        elif kind in ("unhealthy", "hang", "crash"):
            http("POST", f"http://127.0.0.1:{demo_port(name)}/fault", {"mode": kind}, timeout=2)
            if kind != "crash":
                threading.Timer(4.0, lambda: http("POST", f"http://127.0.0.1:{demo_port(name)}/fault",
                                                  {"mode": "healthy"}, timeout=2)).start()
        elif kind == "cascade":
            if kill("fog_coordinator", signal.SIGKILL):
                forced["fog_coordinator"] += 1
        elif kind == "restarts":
            threads = [threading.Thread(target=http, args=("POST", f"{api}/api/orchestration/restart/{name}",
                                                           {})) for _ in range(5)]
            for t in threads:
                t.start()
        elif kind == "silent":
            entry = f"silent-{faults[kind]}"
            http("POST", f"{api}/api/orchestration/registry", {"name": entry})
            http("POST", f"{api}/api/orchestration/registry/{entry}/heartbeat", {})
        elif kind == "escapes":
            http("POST", f"{api}/api/orchestration/restart/forker", {})
        elif kind == "reload" and not applied["busy"]:
            applied["busy"] = True
            threading.Thread(target=reload, daemon=True).start()

    def reload():
        version = "reloaded" if applied["version"] == "original" else "original"
        with open(path, "w") as f:
            f.write(versions[version])
        status, body = http("POST", f"{api}/api/orchestration/reload", timeout=120)
        if status == 200:
            applied["version"] = version
            applied["applied"] += 1
            if version == "original" and any(spare in c for _, (_, _, c) in processes().items()):
                violations.append("the removed service's process still runs after the reload")
        elif status == 409:
            applied["refused"] += 1
        else:
            violations.append(f"reload answered {status}: {body[:200]}")
        applied["busy"] = False

    checker = threading.Thread(target=check, daemon=True)
    checker.start()
    kinds = ["sigkill", "sigstop", "unhealthy", "hang", "crash", "cascade", "restarts", "silent", "escapes",
             "reload"]
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline and orchestrator.poll() is None:
        fault(rng.choice(kinds))
        time.sleep(2.0)
    # Let the last faults play out, then judge the counters.
    time.sleep(8.0)
    stop.set()
    checker.join()
    status, body = http("GET", f"{api}/api/orchestration/services")
    services = json.loads(body)["services"] if status == 200 else {}
    for name, count in forced.items():
        restarts = services.get(name, {}).get("restart_count", 0)
        if restarts < count:
            violations.append(f"{name}: {count} forced restarts but restart_count {restarts}")
    while applied["busy"]:
        time.sleep(0.1)
    status, body = http("GET", f"{api}/api/orchestration/services")
    services = json.loads(body)["services"] if status == 200 else {}
    if ("spare" in services) != (applied["version"] == "reloaded"):
        violations.append(f"after the last reload ({applied['version']}) the services are {sorted(services)}")

    started = time.monotonic()
    orchestrator.send_signal(signal.SIGTERM)
    try:
        code = orchestrator.wait(timeout=60)
    except subprocess.TimeoutExpired:
        orchestrator.kill()
        code = "killed after 60 s"
        violations.append("the final SIGTERM did not end the orchestrator within 60 s")
    shutdown = time.monotonic() - started
    if code != 0:
        violations.append(f"exit code {code} after SIGTERM")
    time.sleep(0.5)
    left = [f"{pid} {cmdline[:80]}" for pid, (_, _, cmdline) in processes().items() if ours(cmdline)]
    violations.extend(f"left behind: {entry}" for entry in left)

    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0
    print(f"chaos: {minutes:g} min, {sum(faults.values())} faults {json.dumps(faults, sort_keys=True)}")
    print(f"chaos: GET /services p50 {statistics.median(ordered) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
          f"max {ordered[-1] * 1e3:.1f} ms over {len(ordered)} samples")
    if rss:
        print(f"chaos: RSS {rss[0] / 1024:.1f} -> max {max(rss) / 1024:.1f} -> end {rss[-1] / 1024:.1f} MiB; "
              f"fds {fds[0]} -> max {max(fds)} -> end {fds[-1]}")
    total = sum(s.get("restart_count", 0) for s in services.values())
    print(f"chaos: reloads: {applied['applied']} applied, {applied['refused']} refused (409); last: "
          f"{applied['version']}")
    print(f"chaos: {total} restarts in all; forced by kills {sum(forced.values())}; shutdown {shutdown:.2f} s, "
          f"exit {code}")
    if violations:
        print(f"chaos: {len(violations)} violation(s):")
        for violation in violations[:50]:
            print(f"  {violation}")
        print(f"chaos: log in {log.name}")
        return 1
    print("chaos: 0 violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
