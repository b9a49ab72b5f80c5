#!/usr/bin/env python3
"""The OpenMetrics exposition against a strict parser: runs the built orchestrator (traces exported, to a
closed port: spans are still made and sampled), restarts a service through the API, scrapes /metrics with
Prometheus' Accept and Accept-Encoding headers, and parses the gzip-compressed answer with
prometheus_client's OpenMetrics parser (from PyPI, in a venv under target/), which refuses anything the
format does not allow. Checks that counters are families without `_total`, that the restart counter and
the check-duration histogram carry trace-id exemplars, and that the text 0.0.4 fallback has none.

Part of scripts/test.sh; exits non-zero on any failure.
"""

import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "openmetrics-venv")
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def venv_python():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "prometheus-client==0.21.1"], check=True)
    return python


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, headers=None, method="GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers, response.read()


PARSE = r'''
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
restarts = families["orchestrator_service_restarts"]
assert restarts.type == "counter", restarts.type
durations = families["orchestrator_health_check_duration_seconds"]
assert durations.type == "histogram", durations.type
def traced(family):
    return [s for s in family.samples if s.exemplar and len(s.exemplar.labels.get("trace_id", "")) == 32]
assert traced(restarts), "no exemplar on the restart counter"
assert traced(durations), "no exemplar on the check durations"
print(f"openmetrics: {len(families)} families parse; exemplars on {len(traced(restarts))} restart and "
      f"{len(traced(durations))} duration series")
'''


def main():
    python = venv_python()
    binary = os.path.join(ROOT, "target", "debug", "fog-orchestrator")
    work = tempfile.mkdtemp()
    config = os.path.join(work, "orchestrator.toml")
    with open(config, "w") as f:
        f.write('[services.app]\ncommand = ["sleep", "3600"]\nhealth.exec = ["true"]\n'
                'health.check_interval = "100ms"\nhealth.timeout = "90ms"\n'
                '[services.app.restart]\ninitial_delay = "0s"\n')
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    process = subprocess.Popen([binary, "run", "--config", config, "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(200):
            try:
                get(api + "/readyz")
                break
            except OSError:
                time.sleep(0.05)
        get(api + "/api/orchestration/restart/app", method="POST")
        time.sleep(0.5)  # a few steady-state checks after the restart
        headers, body = get(api + "/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0"), headers
        assert headers["Content-Encoding"] == "gzip", headers
        text = gzip.decompress(body)
        assert text.endswith(b"# EOF\n")
        subprocess.run([python, "-c", PARSE], input=text, check=True)
        headers, plain = get(api + "/metrics")
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        assert b"# {" not in plain and b"# EOF" not in plain, "text 0.0.4 must carry no exemplars"
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
