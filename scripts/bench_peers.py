#!/usr/bin/env python3
"""fog-orchestrator side by side with the tools a user would pick instead, in one run on this machine.

Workloads (issue 12), each measured on fog-orchestrator and, in the same run, on its peer:
  checks    CPU per 1,000 HTTP health checks: 100 services, each checked every second, against nginx
            answering `/health` and closing every connection (keepalive_timeout 0), vs monit (the two
            take turns: three windows each, a fresh process each time, summed), and two floors: a C
            program doing the same checks through epoll on new sockets, and on kept ones.
  restart   SIGKILL of a child -> the replacement's own first instruction (a C child that appends its
            CLOCK_MONOTONIC start time to a file), restart delay 0, vs runit and s6, and a floor: a minimal C
            parent that respawns with posix_spawn.
  spawn     1,000 idle children (`sleep`): launch -> all running (their start times from /proc), vs s6 and
            runit, and a floor: a C loop of 1,000 posix_spawn.
  idle      the same 1,000 children: CPU per idle minute of the whole supervision tree (the orchestrator
            and its helpers; s6-svscan and every s6-supervise; runsvdir and every runsv).
  rest      REST GETs under wrk -t2 -c32 (10 s), 10 and 1,000 services, vs nginx serving the same bytes.
  registry  fleet scale, no peer: 100,000 services registered at run time (registry.max_registered), then
            heartbeats as fast as wrk sends them (each entry needs one a minute: 1,667/s) while GETs are
            timed; resident memory, /metrics size and render time; one registration past the cap (507).

Prints one table with the ratios. Usage: scripts/bench-peers.sh [workload ...] (default: all).
Environment: BENCH_CHECK_SECONDS (60), BENCH_IDLE_SECONDS (60), BENCH_KILLS (30), BENCH_WRK_SECONDS (10),
BENCH_REGISTERED (100000).
"""

import json
import os
import re
import resource
import shutil
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
BINARY = os.path.join(ROOT, "target", "release", "fog-orchestrator")
HELPERS = os.path.join(ROOT, "target", "peers")
TICKS = os.sysconf("SC_CLK_TCK")
CHECK_SECONDS = int(os.environ.get("BENCH_CHECK_SECONDS", "60"))
IDLE_SECONDS = int(os.environ.get("BENCH_IDLE_SECONDS", "60"))
KILLS = int(os.environ.get("BENCH_KILLS", "30"))
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
REGISTERED = int(os.environ.get("BENCH_REGISTERED", "100000"))
ROWS = []


def row(workload, fog, peer_name, peer, unit, target, better="lower"):
    ratio = fog / peer if peer else float("nan")
    ROWS.append((workload, fog, peer_name, peer, unit, ratio, target))
    print(f"  {workload}: fog {fog:.2f} {unit}, {peer_name} {peer:.2f} {unit}, ratio {ratio:.2f} ({target})",
          flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def wait_for(what, check, limit=60.0, interval=0.05):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return {"ppid": int(fields[1]), "utime": int(fields[11]), "stime": int(fields[12]),
            "start": int(fields[19]), "comm": text[text.index("(") + 1:text.rindex(")")]}


def all_processes():
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = proc_stat(int(entry))
            except (OSError, ValueError):
                pass
    return found


def tree(root):
    """The pids of `root` and all its descendants."""
    processes = all_processes()
    children = {}
    for pid, stat in processes.items():
        children.setdefault(stat["ppid"], []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in processes:
            out.append(pid)
            stack.extend(children.get(pid, []))
    return out, processes


def cpu_seconds(pids, processes, skip=("sleep",)):
    """CPU time of `pids` (but the idle children), every thread of each, from /proc/PID/task/TID/schedstat
    (nanoseconds on a CPU; the tick-based utime and stime are too coarse for an idle minute, and
    /proc/PID/schedstat counts the main thread only)."""
    total = 0.0
    for pid in pids:
        if pid not in processes or processes[pid]["comm"] in skip:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e9
            except OSError:
                pass
    return total


def start(args, **kwargs):
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def kill_tree(root, directory=None):
    """SIGKILLs `root` first (a supervisor killed after its children would start them again), then what ran
    under it; with `directory`, then every process still working in it (what the supervisor started as it
    died, now reparented and out of the tree)."""
    pids, _ = tree(root)
    for pid in [root] + [pid for pid in reversed(pids) if pid != root]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if directory is None:
        return
    directory = os.path.realpath(directory) + os.sep
    for _ in range(50):
        left = []
        for pid in all_processes():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd") + os.sep
            except OSError:
                continue
            if cwd.startswith(directory) and pid != os.getpid():
                left.append(pid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def default_open_files():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def fog(work, config, name="fog"):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    port = free_port()
    # Under the soft open-file limit most systems give a process (1,024), whatever this machine's is.
    process = start([BINARY, "run", "--config", path, "--listen", f"127.0.0.1:{port}"],
                    env={**os.environ, "RUST_LOG": "warn"}, preexec_fn=default_open_files)
    api = f"http://127.0.0.1:{port}"
    wait_for("the orchestrator", lambda: get(api + "/healthz") is not None)
    return process, api


def nginx(work, name, body):
    """nginx on a free port: `/health` answers 200 and closes the connection; `root` is work/name."""
    port = free_port()
    root = os.path.join(work, name)
    os.makedirs(root, exist_ok=True)
    config = os.path.join(work, f"{name}.conf")
    with open(config, "w") as f:
        f.write(f"""
daemon off; worker_processes 1; pid {work}/{name}.pid; error_log {work}/{name}.error.log;
events {{ worker_connections 4096; }}
http {{
  access_log {work}/{name}.access.log;
  client_body_temp_path {work}/{name}.tmp; proxy_temp_path {work}/{name}.tmp;
  fastcgi_temp_path {work}/{name}.tmp; uwsgi_temp_path {work}/{name}.tmp; scgi_temp_path {work}/{name}.tmp;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    {body}
  }}
}}
""")
    process = start(["nginx", "-c", config, "-p", work])
    wait_for("nginx", lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None)
    return process, port


# ---- checks ------------------------------------------------------------------------------------------------

def checks(work):
    print("checks: 100 services, HTTP every second, targets close every connection", flush=True)
    target, port = nginx(work, "target", "keepalive_timeout 0; location = /health { return 200 'ok'; }")
    log = os.path.join(work, "target.access.log")

    def measure(process_root, label, seconds):
        """CPU seconds of the process tree, and the checks the target logged, over `seconds`."""
        time.sleep(5)
        pids, before = tree(process_root)
        cpu_before = cpu_seconds(pids, before)
        lines_before = sum(1 for _ in open(log))
        time.sleep(seconds)
        pids, after = tree(process_root)
        lines = sum(1 for _ in open(log)) - lines_before
        cpu = cpu_seconds(pids, after) - cpu_before
        print(f"    {label}: {lines} checks in {seconds:g} s, {cpu * 1000:.0f} ms CPU, "
              f"{per_thousand(cpu, lines):.1f} ms per 1,000", flush=True)
        return cpu, lines

    def per_thousand(cpu, lines):
        return cpu * 1000 / lines * 1000 if lines else float("nan")

    services = "".join(f'[services.s{i}]\nhealth.http = "http://127.0.0.1:{port}/health"\n'
                       'health.check_interval = "1s"\nhealth.timeout = "500ms"\n' for i in range(100))
    monitrc = os.path.join(work, "monitrc")
    with open(monitrc, "w") as f:
        f.write(f"set daemon 1\nset logfile {work}/monit.log\nset idfile {work}/monit.id\n"
                f"set statefile {work}/monit.state\nset pidfile {work}/monit.pid\n")
        for i in range(100):
            f.write(f'check host s{i} with address 127.0.0.1\n'
                    f'  if failed port {port} protocol http request "/health" then alert\n')
    os.chmod(monitrc, 0o600)
    # fog and monit take turns, three windows each with a fresh process, and their sums are compared: the
    # machine's drift over the minutes of a run, and where the scheduler happens to place one process
    # and the target, weigh on both alike instead of on whichever ran at the time.
    windows = 3
    totals = {"fog": [0.0, 0], "monit": [0.0, 0]}
    for window in range(1, windows + 1):
        process, _ = fog(work, services, name=f"fog{window}")
        cpu, lines = measure(process.pid, f"fog-orchestrator, window {window}", CHECK_SECONDS / windows)
        stop(process)
        totals["fog"][0] += cpu
        totals["fog"][1] += lines
        monit = start(["monit", "-I", "-c", monitrc])
        cpu, lines = measure(monit.pid, f"monit, window {window}", CHECK_SECONDS / windows)
        stop(monit)
        totals["monit"][0] += cpu
        totals["monit"][1] += lines
    fog_cost, monit_cost = (per_thousand(*totals[name]) for name in ("fog", "monit"))
    print(f"    fog-orchestrator: {fog_cost:.1f} ms per 1,000 in all; monit: {monit_cost:.1f}", flush=True)
    floors = {}
    for mode in ("new", "again"):
        floor = start([os.path.join(HELPERS, "checks"), str(port), mode])
        floors[mode] = per_thousand(*measure(floor.pid, f"C floor, {mode} sockets", CHECK_SECONDS))
        stop(floor)
    stop(target)
    row("CPU per 1,000 HTTP checks (closing targets)", fog_cost, "monit", monit_cost, "ms", "<= 0.4x, <= 40 ms")
    row("same", fog_cost, "C floor, a new socket per check", floors["new"], "ms", "(floor)")
    row("same", fog_cost, "C floor, sockets connected again", floors["again"], "ms", "(floor)")
    row("C floor, sockets connected again, against monit", floors["again"], "monit", monit_cost, "ms", "(floor)")


# ---- restart -----------------------------------------------------------------------------------------------

def stamp_pid(file):
    """The pid of the stamp child writing `file`."""
    for pid, _ in all_processes().items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and argv[0].endswith(b"/stamp") and argv[1] == file.encode():
            return pid
    return None


def lines(file):
    try:
        with open(file) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def kill_latencies(file, kills):
    wait_for("the first child", lambda: len(lines(file)) >= 1 and stamp_pid(file))
    latencies = []
    for _ in range(kills):
        time.sleep(1.1)  # runit and s6 hold back a service that ran less than a second
        before = len(lines(file))
        pid = stamp_pid(file)
        killed = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        wait_for("the replacement", lambda: len(lines(file)) > before, limit=10)
        latencies.append((lines(file)[-1] - killed) / 1e6)
    return statistics.median(latencies)


def restart(work):
    print(f"restart: SIGKILL -> the replacement's first instruction, {KILLS} kills each", flush=True)
    stamp = os.path.join(HELPERS, "stamp")
    results = {}
    file = os.path.join(work, "fog.stamps")
    process, _ = fog(work, f'[services.stamp]\ncommand = ["{stamp}", "{file}"]\n'
                           '[services.stamp.restart]\ninitial_delay = "0s"\nmax_attempts = 1000\n')
    results["fog-orchestrator"] = kill_latencies(file, KILLS)
    stop(process)
    for peer, supervise in (("runit", "runsv"), ("s6", "s6-supervise")):
        service = os.path.join(work, f"{peer}-stamp")
        os.makedirs(service, exist_ok=True)
        file = os.path.join(work, f"{peer}.stamps")
        with open(os.path.join(service, "run"), "w") as f:
            f.write(f"#!/bin/sh\nexec {stamp} {file}\n")
        os.chmod(os.path.join(service, "run"), 0o755)
        process = start([supervise, service])
        results[peer] = kill_latencies(file, KILLS)
        kill_tree(process.pid, service)
        process.wait()
    floor = subprocess.run([os.path.join(HELPERS, "floor"), "respawn", stamp, os.path.join(work, "floor.stamps"),
                            str(KILLS)], capture_output=True, text=True, check=True)
    results["floor (C posix_spawn parent)"] = statistics.median(int(x) / 1000 for x in floor.stdout.split())
    for name, value in results.items():
        print(f"    {name}: median {value:.2f} ms", flush=True)
    row("SIGKILL -> replacement running", results["fog-orchestrator"], "runit", results["runit"], "ms",
        "<= 0.5x runit")
    row("SIGKILL -> replacement running", results["fog-orchestrator"], "s6", results["s6"], "ms", "(s6)")
    row("SIGKILL -> replacement running", results["fog-orchestrator"], "C floor",
        results["floor (C posix_spawn parent)"], "ms", "(floor)")


# ---- spawn and idle ----------------------------------------------------------------------------------------

def children_of(root, duration):
    pids, processes = tree(root)
    return [processes[p] for p in pids if processes[p]["comm"] == "sleep"]


def launch_and_idle(root_process, duration, label, count=1000):
    root = root_process.pid
    # Each look scans every process in /proc: once a second, so that the bench does not compete for the
    # CPU with the launch it measures (the start times come from /proc, whenever it is read).
    wait_for(f"{count} children of {label}", lambda: len(children_of(root, duration)) >= count, limit=120,
             interval=1.0)
    started = proc_stat(root)["start"]
    last = max(child["start"] for child in children_of(root, duration))
    spawn = (last - started) / TICKS
    time.sleep(5)
    pids, before = tree(root)
    cpu_before = cpu_seconds(pids, before)
    time.sleep(IDLE_SECONDS)
    pids, after = tree(root)
    idle = (cpu_seconds(pids, after) - cpu_before) * 1000 * 60 / IDLE_SECONDS
    print(f"    {label}: all {count} running {spawn:.2f} s after launch; {idle:.1f} ms CPU per idle minute",
          flush=True)
    return spawn, idle


def spawn(work):
    print(f"spawn/idle: 1,000 children (idle CPU over {IDLE_SECONDS} s)", flush=True)
    results = {}
    process, _ = fog(work, "".join(f'[services.c{i}]\ncommand = ["sleep", "3601"]\n' for i in range(1000)))
    results["fog-orchestrator"] = launch_and_idle(process, 3601, "fog-orchestrator")
    stop(process)
    for peer, scanner in (("s6", "s6-svscan"), ("runit", "runsvdir")):
        scandir = os.path.join(work, f"{peer}-scan")
        for i in range(1000):
            service = os.path.join(scandir, f"c{i}")
            os.makedirs(service, exist_ok=True)
            with open(os.path.join(service, "run"), "w") as f:
                f.write("#!/bin/sh\nexec sleep 3602\n")
            os.chmod(os.path.join(service, "run"), 0o755)
        # s6-svscan supervises at most 500 services unless told otherwise.
        process = start([scanner, "-c", "2000", scandir] if peer == "s6" else [scanner, scandir])
        results[peer] = launch_and_idle(process, 3602, peer)
        kill_tree(process.pid, scandir)
        process.wait()
    floor = subprocess.run([os.path.join(HELPERS, "floor"), "spawn", "1000"], capture_output=True, text=True,
                           check=True)
    floor_seconds = float(floor.stdout.split()[0]) / 1000
    print(f"    floor (C posix_spawn loop): {floor_seconds:.2f} s", flush=True)
    fog_spawn, fog_idle = results["fog-orchestrator"]
    row("1,000 children: launch -> all running", fog_spawn, "s6", results["s6"][0], "s", "(s6)")
    row("1,000 children: launch -> all running", fog_spawn, "C floor", floor_seconds, "s", "<= 1.0x floor")
    row("1,000 children: CPU per idle minute", fog_idle, "runit", results["runit"][1], "ms", "<= 10 ms")
    row("1,000 children: CPU per idle minute", fog_idle, "s6", results["s6"][1], "ms", "(s6)")


# ---- REST --------------------------------------------------------------------------------------------------

def wrk(url):
    """Requests per second of wrk -t2 -c32; refuses a run with errors or non-2xx answers."""
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{WRK_SECONDS}s", url], capture_output=True, text=True,
                         check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def rest(work):
    print("rest: wrk -t2 -c32 against the orchestrator and nginx serving the same bytes", flush=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    probed = listener.getsockname()[1]
    for count in (10, 1000):
        config = "".join(f'[services.x{i}]\nhealth.tcp = "127.0.0.1:{probed}"\nhealth.check_interval = "30s"\n'
                         for i in range(count))
        process, api = fog(work, config, f"rest{count}")
        time.sleep(2)
        static, port = None, None
        paths = {"services": "/api/orchestration/services", "health": "/api/orchestration/health",
                 "metrics": "/metrics"}
        root = os.path.join(work, f"static{count}")
        os.makedirs(root, exist_ok=True)
        for name, path in paths.items():
            body = get(api + path)
            with open(os.path.join(root, name), "wb") as f:
                f.write(body)
            print(f"    {path}: {len(body):,} bytes", flush=True)
        static, port = nginx(work, f"static{count}", "location / { }")
        for name, path in paths.items():
            fog_rate = wrk(api + path)
            nginx_rate = wrk(f"http://127.0.0.1:{port}/{name}")
            row(f"GET {path}, {count} services", fog_rate, "nginx", nginx_rate, "req/s", ">= 0.5x nginx",
                better="higher")
        stop(static)
        stop(process)
    listener.close()


# ---- registry ----------------------------------------------------------------------------------------------

WRK_SCRIPT = """
local counter = 0
local prefix = os.getenv("FOG_PREFIX")
local total = tonumber(os.getenv("FOG_TOTAL"))
local path = os.getenv("FOG_PATH")
request = function()
  counter = counter + 1
  local n = (counter - 1) % total
  if path == "register" then
    return wrk.format("POST", "/api/orchestration/registry", {["Content-Type"] = "application/json"},
      string.format('{"name":"%s%d","type":"worker","address":"10.0.%d.%d","port":8080,"tags":["fleet"]}',
        prefix, n, math.floor(n / 256) % 256, n % 256))
  end
  return wrk.format("POST", string.format("/api/orchestration/registry/%s%d/heartbeat", prefix, n))
end
"""


def wrk_script(work, url, env, seconds, threads=1, connections=16, requests=None):
    """wrk with the registry script; returns (requests, requests/s, p50 ms, p99 ms, non-2xx)."""
    script = os.path.join(work, "registry.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script,
                          url], capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
    done = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def percentile(name):
        value, unit = re.search(rf"{name}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return done, rate, percentile("50"), percentile("99"), int(non2xx.group(1)) if non2xx else 0


def timed_get(url, times=20):
    """Median and worst milliseconds of `times` GETs of `url`, and the body's size."""
    samples, size = [], 0
    for _ in range(times):
        started = time.perf_counter()
        size = len(get(url))
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples), size


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def registry(work):
    print(f"registry: {REGISTERED:,} services registered at run time", flush=True)
    process, api = fog(work, f"[registry]\nmax_registered = {REGISTERED}\n[services.anchor]\n", "registry")
    rss_empty = rss_mib(process.pid)
    env = {"FOG_PREFIX": "w", "FOG_TOTAL": str(REGISTERED), "FOG_PATH": "register"}
    # Each registration is a new name until REGISTERED; later ones update (201 too); stop once all exist.
    started = time.perf_counter()
    while True:
        count = json.loads(get(api + "/api/orchestration/registry?limit=1"))
        if count.get("total_services", 0) >= REGISTERED + 1:
            break
        wrk_script(work, api, env, 5, connections=32)
        if time.perf_counter() - started > 600:
            raise SystemExit("registering took over 10 minutes")
    registered_in = time.perf_counter() - started
    rss_full = rss_mib(process.pid)
    print(f"    {REGISTERED:,} registered in {registered_in:.1f} s; RSS {rss_empty:.1f} MiB empty, "
          f"{rss_full:.1f} MiB full", flush=True)
    refused = urllib.request.Request(api + "/api/orchestration/registry", method="POST",
                                     data=b'{"name":"one-too-many"}', headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(refused, timeout=30)
        status = 201
    except urllib.error.HTTPError as error:
        status = error.code
    print(f"    one more registration: HTTP {status}", flush=True)
    if status != 507:
        raise SystemExit(f"past the cap a registration answered {status}, not 507")

    # Heartbeats at full speed in the background while GETs are timed.
    result = {}

    def heartbeat_storm():
        result["beats"] = wrk_script(work, api, {**env, "FOG_PATH": "heartbeat"}, 20, connections=16)
    storm = threading.Thread(target=heartbeat_storm)
    storm.start()
    time.sleep(2)
    gets = {path: timed_get(api + path, 10) for path in (
        "/api/orchestration/registry?limit=100", f"/api/orchestration/registry?limit=100&offset={REGISTERED - 100}",
        "/api/orchestration/services", "/api/orchestration/health", "/healthz")}
    storm.join()
    done, rate, p50, p99, non2xx = result["beats"]
    if non2xx:
        raise SystemExit(f"{non2xx} heartbeats were refused")
    metrics_started = time.perf_counter()
    metrics = get(api + "/metrics")
    metrics_ms = (time.perf_counter() - metrics_started) * 1000
    gzip_started = time.perf_counter()
    gzipped = get(api + "/metrics", {"Accept-Encoding": "gzip"})
    gzip_ms = (time.perf_counter() - gzip_started) * 1000
    rss_after = rss_mib(process.pid)
    print(f"    heartbeats: {done:,} in 20 s = {rate:,.0f}/s (needed: {REGISTERED / 60:,.0f}/s), "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, under load", flush=True)
    for path, (median, worst, size) in gets.items():
        print(f"    GET {path} during the heartbeats: median {median:.1f} ms, worst {worst:.1f} ms, "
              f"{size:,} bytes", flush=True)
    print(f"    /metrics: {len(metrics) / 1e6:.1f} MB in {metrics_ms:.0f} ms; gzip {len(gzipped) / 1e6:.1f} MB "
          f"in {gzip_ms:.0f} ms; RSS after {rss_after:.1f} MiB", flush=True)
    stop(process)
    row(f"registry, {REGISTERED:,} entries: heartbeats/s sustained", rate, "needed", REGISTERED / 60, "/s",
        ">= 1.0x needed", better="higher")
    row(f"registry, {REGISTERED:,} entries: resident memory", rss_after, "empty", rss_empty, "MiB", "(bounded)")


def main():
    wanted = sys.argv[1:] or ["checks", "restart", "spawn", "rest", "registry"]
    work = tempfile.mkdtemp(prefix="fog-peers-")
    os.chmod(work, 0o755)  # nginx's workers run as nobody: they must read what they serve
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores", flush=True)
    try:
        for name in wanted:
            {"checks": checks, "restart": restart, "spawn": spawn, "rest": rest, "registry": registry}[name](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| workload | fog-orchestrator | peer | peer's figure | fog / peer | target |")
    print("|---|---|---|---|---|---|")
    for workload, fog_value, peer, peer_value, unit, ratio, target in ROWS:
        print(f"| {workload} | {fog_value:.2f} {unit} | {peer} | {peer_value:.2f} {unit} | {ratio:.2f} | {target} |")
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
