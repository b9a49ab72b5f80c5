#!/usr/bin/env python3
"""Records, from a real run of the orchestrator, the series the alert rules read, and writes the promtool
unit tests of alerts/orchestrator.rules.yml around them (alerts/tests/orchestrator.test.yml).

The run: the built binary supervises real processes (demo services and shell commands) while faults are
injected on a schedule: web turns unhealthy with automatic recovery off (api, which requires it, fails
too but only because of web), slow fails every check with a failure threshold it never reaches (degraded),
choppy fails one check in four (degraded by failure ratio, flapping), crashy crashes at every start until
its restarts are spent (restarting too often, then failed), stuck never passes a startup probe, agent
registers at run time, sends three heartbeats and falls silent. At second 25 the configuration file gets an
unknown key and a reload is asked for (rejected: nothing changes); at second 75 the file is fixed, with one
more service, and reloaded again (applied). At the end the orchestrator is killed.

/metrics is scraped every second, as Prometheus would (plus `up`, 0 once the scrape fails). The engine's
timings are compressed 15 times (checks every 2 s, heartbeat timeout 3 s), so the series are replayed at a
15 s interval: the same run at typical timings (checks every 30 s, heartbeat timeout 45 s). Durations in
values are scaled the same way (timestamps become seconds since the start, times 15; the heartbeat
timeout times 15). Nothing else is touched: every other value is what the engine exported.

The expectations are written below by hand from the fault schedule and the rules' meaning, never derived
from the recording: which alerts fire, for which services, at which moments.

Usage: scripts/record-alert-series.py [path/to/fog-orchestrator]  (default target/debug/fog-orchestrator;
takes about two minutes; then run `promtool test rules alerts/tests/orchestrator.test.yml`).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "fog-orchestrator")
OUT = os.path.join(ROOT, "alerts", "tests", "orchestrator.test.yml")
SCALE = 15  # one recorded second is 15 s of rule time
RUN = 100  # seconds before the orchestrator is killed
AFTER = 10  # seconds of failed scrapes after that
JOB, INSTANCE = "fog-orchestrator", "orch:8400"
RUNBOOK = "https://github.com/fog-orchestrator/fog-orchestrator/blob/main/docs/runbook.md#"
FAMILIES = {
    "orchestrator_service_health",
    "orchestrator_service_state",
    "orchestrator_service_dependency_blocked",
    "orchestrator_service_restarts_total",
    "orchestrator_health_checks_total",
    "orchestrator_health_check_failures_total",
    "orchestrator_service_health_transitions_total",
    "orchestrator_heartbeat_last_received_timestamp_seconds",
    "orchestrator_heartbeat_timeout_seconds",
    "orchestrator_config_last_reload_successful",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def reload(orch, path, text, expected):
    """Writes `text` as the configuration file and asks for a reload, which must answer `expected`."""
    with open(path, "w") as f:
        f.write(text)
    try:
        status = urllib.request.urlopen(
            urllib.request.Request(orch + "/api/orchestration/reload", data=b"", method="POST"), timeout=30
        ).status
    except urllib.error.HTTPError as error:
        status = error.code
    if status != expected:
        raise SystemExit(f"reload answered {status}, expected {expected}")


def config(dir, ports):
    demo = lambda name: (
        f'[services.{name}]\ncommand = ["{BINARY}", "demo-service", "--name", "{name}", "--listen", '
        f'"127.0.0.1:{ports[name]}", "--state-dir", "{dir}"]\n'
        f'health.http = "http://127.0.0.1:{ports[name]}/health"\n'
    )
    counter = os.path.join(dir, "choppy.count")
    choppy_probe = (f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; '
                    f'[ $((n % 4)) -ne 0 ]')
    return (
        '[registry]\nheartbeat_interval = "1s"\nheartbeat_timeout = "3s"\n'
        '[defaults.health]\ncheck_interval = "2s"\ntimeout = "1s"\n'
        + demo("web") + "health.auto_recovery = false\n"
        + demo("api") + 'depends_on = ["web"]\nhealth.auto_recovery = false\n'
        + demo("slow") + "health.failure_threshold = 1000\n"
        + demo("crashy")
        + '[services.crashy.restart]\ninitial_delay = "1s"\nbackoff_base = 1.0\nmax_attempts = 3\n'
        + f'[services.choppy]\ncommand = ["sleep", "3600"]\n'
        + f'health.exec = ["sh", "-c", "{choppy_probe}"]\n'
        + f'[services.stuck]\ncommand = ["sleep", "3600"]\nhealth.tcp = "127.0.0.1:{ports["dead"]}"\n'
        + 'health.startup_timeout = "1h"\n'
    )


def parse(text):
    samples = {}
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found and found.group(1) in FAMILIES:
            samples[found.group(1) + (found.group(2) or "{}")] = float(found.group(3))
    return samples


def with_target(series):
    name, labels = series.split("{", 1)
    inner = labels.rstrip("}")
    target = f'job="{JOB}",instance="{INSTANCE}"'
    return f"{name}{{{target}{',' if inner else ''}{inner}}}"


def record():
    dir = tempfile.mkdtemp(prefix="fog-record-")
    ports = {name: free_port() for name in ["web", "api", "slow", "crashy", "dead", "orch"]}
    path = os.path.join(dir, "orchestrator.toml")
    with open(path, "w") as f:
        f.write(config(dir, ports))
    orch = f"http://127.0.0.1:{ports['orch']}"
    process = subprocess.Popen(
        [BINARY, "run", "--config", path, "--listen", f"127.0.0.1:{ports['orch']}", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir, "log.jsonl"), "w"),
        env={**os.environ, "RUST_LOG": "info"},
    )
    scrapes, start = [], time.time()
    for _ in range(100):
        try:
            http("GET", orch + "/healthz")
            break
        except OSError:
            time.sleep(0.05)

    def fault(name, mode, sticky=False):
        http("POST", f"http://127.0.0.1:{ports[name]}/fault", {"mode": mode, "sticky": sticky})

    schedule = {
        2: lambda: http("POST", orch + "/api/orchestration/registry", {"name": "agent"}),
        3: lambda: http("POST", orch + "/api/orchestration/registry/agent/heartbeat", {}),
        4: lambda: http("POST", orch + "/api/orchestration/registry/agent/heartbeat", {}),
        5: lambda: [fault("web", "unhealthy"), fault("api", "unhealthy"), fault("slow", "unhealthy"),
                    fault("crashy", "crash", sticky=True)],
        25: lambda: reload(orch, path, config(dir, ports) + 'colour = "blue"\n', 400),
        75: lambda: reload(orch, path, config(dir, ports) + '[services.extra]\ncommand = ["sleep", "3600"]\n', 200),
        RUN: lambda: process.send_signal(signal.SIGKILL),
    }
    for second in range(RUN + AFTER + 1):
        time.sleep(max(0.0, start + second - time.time()))
        if second in schedule:
            schedule[second]()
        try:
            scrapes.append((time.time(), parse(http("GET", orch + "/metrics"))))
        except OSError:
            scrapes.append((time.time(), None))
        print(f"\rrecorded {second + 1}/{RUN + AFTER + 1} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    process.wait()
    return start, scrapes


def values(start, scrapes):
    """Each series as the promtool value list, time-scaled where the value is a time or a duration."""
    names = sorted({key for _, samples in scrapes if samples for key in samples})
    series = {with_target(f'up{{}}'): ["1" if samples is not None else "0" for _, samples in scrapes]}
    for key in names:
        out = []
        for _, samples in scrapes:
            if samples is None or key not in samples:
                out.append("_")
                continue
            value = samples[key]
            if key.startswith("orchestrator_heartbeat_last_received_timestamp_seconds") and value > 0:
                value = round((value - start) * SCALE, 3)
            elif key.startswith("orchestrator_heartbeat_timeout_seconds"):
                value = value * SCALE
            out.append(f"{value:g}")
        series[with_target(key)] = out
    return series


def compress(tokens):
    """Runs of one value as promtool's `v+0xN` (N+1 samples)."""
    out, i = [], 0
    while i < len(tokens):
        j = i
        while j + 1 < len(tokens) and tokens[j + 1] == tokens[i]:
            j += 1
        run = j - i + 1
        if tokens[i] == "_":
            out.append(" ".join(["_"] * run))
        elif run == 1:
            out.append(tokens[i])
        else:
            out.append(f"{tokens[i]}+0x{run - 1}")
        i = j + 1
    return " ".join(out)


def humanize_duration(v):
    """Go's humanizeDuration, as the Prometheus template function prints it."""
    if abs(v) < 1:
        return f"{v:.4g}s"
    sign = "-" if v < 0 else ""
    v = abs(v)
    seconds, minutes = int(v) % 60, int(v) // 60 % 60
    hours, days = int(v) // 3600 % 24, int(v) // 86400
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{v:.4g}s"


def alert(name, labels, severity, summary, description):
    return {"labels": {"job": JOB, "instance": INSTANCE, **labels, "severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": RUNBOOK + name.lower()}}


def expectations(series, start, scrapes):
    """Hand-written from the schedule: (eval time in seconds of the run, alert name, expected alerts)."""
    quiet = [(4, name, []) for name in [
        "OrchestratorServiceUnhealthy", "OrchestratorServiceDegraded", "OrchestratorServiceFailed",
        "OrchestratorServiceRestartingTooOften", "OrchestratorHeartbeatTimeout", "OrchestratorServiceFlapping",
        "OrchestratorDown", "OrchestratorConfigReloadFailed"]]
    late = 90
    # The agent's last heartbeat (second 4 of the run), as the rule's $value will see it at `late`.
    last = next(float(v) for k, v in ((k, vs[late]) for k, vs in series.items())
                if k.startswith("orchestrator_heartbeat_last_received_timestamp_seconds") and 'service="agent"' in k)
    silent = humanize_duration(late * SCALE - last)
    return quiet + [
        (20, "OrchestratorServiceRestartingTooOften", [alert(
            "OrchestratorServiceRestartingTooOften", {"service": "crashy"}, "warning",
            "Service crashy restarted 3 times in 15 minutes",
            "crashy on orch:8400 is being restarted automatically again and again (crash loop or flapping health).")]),
        (late, "OrchestratorServiceRestartingTooOften", []),
        (late, "OrchestratorServiceUnhealthy", [alert(
            "OrchestratorServiceUnhealthy", {"service": "web", "status": "unhealthy"}, "critical",
            "Service web is unhealthy",
            "web on orch:8400 failed at least failure_threshold consecutive health checks (or its process is "
            "down), no required dependency of it is down, and nothing is restarting it (automatic recovery is "
            "off, it is external, or its restarts stopped).")]),
        (late, "OrchestratorServiceDegraded", [alert(
            "OrchestratorServiceDegraded", {"service": name}, "warning", f"Service {name} is degraded",
            f"{name} on orch:8400 keeps failing some health checks (degraded, or more than 10 % of its checks "
            "failed over 15 minutes) without staying unhealthy.") for name in ["choppy", "slow"]]),
        (late, "OrchestratorServiceFailed", [alert(
            "OrchestratorServiceFailed", {"service": "crashy", "state": "failed"}, "critical",
            "Service crashy has failed",
            "crashy on orch:8400 used up its automatic restarts and is left stopped until someone restarts it "
            "with force=true.")]),
        (late, "OrchestratorHeartbeatTimeout", [alert(
            "OrchestratorHeartbeatTimeout", {"service": "agent"}, "warning", "No heartbeat from agent",
            f"agent on orch:8400 sent no heartbeat for {silent}, longer than the heartbeat timeout (services "
            "already unhealthy, failed or stopped have their own alerts).")]),
        (late, "OrchestratorServiceStuckStarting", [alert(
            "OrchestratorServiceStuckStarting", {"service": "stuck", "state": "starting"}, "warning",
            "Service stuck is stuck starting",
            "stuck on orch:8400 has been starting for 10 minutes without a required dependency being down.")]),
        (late, "OrchestratorServiceFlapping", [alert(
            "OrchestratorServiceFlapping", {"service": "choppy"}, "warning", "Service choppy is flapping",
            "choppy on orch:8400 changed health at least 6 times in 30 minutes (intermittent failures or a "
            "crash loop).")]),
        (late, "OrchestratorDown", []),
        # Rejected at 25, for 5 minutes (20 recorded seconds) by 45; applied again at 75.
        (40, "OrchestratorConfigReloadFailed", []),
        (60, "OrchestratorConfigReloadFailed", [alert(
            "OrchestratorConfigReloadFailed", {}, "warning", "fog-orchestrator orch:8400 rejected its configuration file",
            "The last configuration reload on orch:8400 found problems in the file and changed nothing: the "
            "orchestrator still runs its previous configuration, not the one on disk.")]),
        (late, "OrchestratorConfigReloadFailed", []),
        (RUN + AFTER, "OrchestratorDown", [{
            "labels": {"job": JOB, "instance": INSTANCE, "severity": "critical"},
            "annotations": {"summary": "fog-orchestrator orch:8400 is down",
                            "description": "Prometheus cannot scrape the orchestrator at orch:8400: nothing it "
                                           "supervises is being watched or restarted.",
                            "runbook_url": RUNBOOK + "orchestratordown"}}]),
    ]


def quote(text):
    return json.dumps(text)


def test_body(series, tests, scale):
    """A promtool test's input series and alert tests, as YAML lines (after its `input_series:` line):
    `tests` holds (eval time in recorded seconds, alert name, expected alerts), replayed `scale` times slower."""
    lines = []
    for key, tokens in series.items():
        lines.append(f"      - series: {quote(key)}")
        lines.append(f"        values: {quote(compress(tokens))}")
    lines.append("    alert_rule_test:")
    for second, name, alerts in tests:
        lines.append(f"      - eval_time: {second * scale}s")
        lines.append(f"        alertname: {name}")
        if not alerts:
            lines.append("        exp_alerts: []")
            continue
        lines.append("        exp_alerts:")
        for expected in alerts:
            lines.append("          - exp_labels:")
            for k, v in expected["labels"].items():
                lines.append(f"                {k}: {quote(v)}")
            lines.append("            exp_annotations:")
            for k, v in expected["annotations"].items():
                lines.append(f"                {k}: {quote(v)}")
    return lines


def write(series, tests):
    lines = [
        "# Unit tests of alerts/orchestrator.rules.yml: promtool test rules alerts/tests/orchestrator.test.yml",
        "#",
        "# GENERATED by scripts/record-alert-series.py: the input series were recorded from a real run of the",
        "# orchestrator (real processes, faults injected on a schedule; see the script), scraped every second",
        f"# with engine timings compressed {SCALE}x and replayed at a {SCALE}s interval. The expectations are",
        "# hand-written in the script from the fault schedule. The last two tests (no target at all, and the",
        "# uptime recording rules) are hand-written: `absent` needs no engine series.",
        "rule_files:",
        "  - ../orchestrator.rules.yml",
        f"evaluation_interval: {SCALE}s",
        "tests:",
        "  - name: a recorded run with every kind of fault",
        f"    interval: {SCALE}s",
        "    input_series:",
    ]
    lines.extend(test_body(series, tests, SCALE))
    lines.append(HAND_WRITTEN)
    with open(OUT, "w") as f:
        f.write("\n".join(lines))


HAND_WRITTEN = """
  - name: no orchestrator target at all is absent after 5m
    interval: 1m
    input_series:
      - series: 'up{job="other",instance="x:1"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: OrchestratorAbsent
        exp_alerts: []
      - eval_time: 6m
        alertname: OrchestratorAbsent
        exp_alerts:
          - exp_labels:
                job: "fog-orchestrator"
                severity: "critical"
            exp_annotations:
                summary: "No fog-orchestrator target is known to Prometheus"
                description: "The fog-orchestrator scrape job has no targets: the orchestrator is not deployed or service discovery lost it."
                runbook_url: "https://github.com/fog-orchestrator/fog-orchestrator/blob/main/docs/runbook.md#orchestratorabsent"

  - name: uptime ratios record the healthy share
    interval: 1m
    input_series:
      - series: 'orchestrator_service_health{job="fog-orchestrator",instance="orch:8400",service="dao",status="healthy"}'
        values: '1 1 1 0 0 1 1 1 1 1'
    promql_expr_test:
      - expr: service:orchestrator_uptime:ratio_1h
        eval_time: 9m
        exp_samples:
          - labels: 'service:orchestrator_uptime:ratio_1h{job="fog-orchestrator",instance="orch:8400",service="dao",status="healthy"}'
            value: 0.8
"""


def main():
    start, scrapes = record()
    series = values(start, scrapes)
    write(series, expectations(series, start, scrapes))
    print(f"wrote {OUT}: {len(series)} series, {len(scrapes)} samples each", file=sys.stderr)


if __name__ == "__main__":
    main()
