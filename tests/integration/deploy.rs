//! The shipped observability files, proven with the real tools: promtool and amtool on the shipped configs
//! and rules, the YAML and JSON of every deploy file with their references, and a live run in which a real
//! Prometheus scrapes the orchestrator with the shipped config and rules (timings shortened here, not in
//! the shipped files) and a real Alertmanager receives the alerts.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use std::sync::{Arc, Mutex};

use crate::binary::{Orchestrator, http, http_text, spare_port};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed ({e}); scripts/test.sh installs it from Debian"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every (dashboard, panel title, expr) of the shipped dashboards.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().to_owned();
                queries.push((file.clone(), panel["title"].as_str().unwrap().to_owned(), expr));
            }
        }
        for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
            if let Some(expr) = annotation["expr"].as_str() {
                let title = format!("annotation {}", annotation["name"].as_str().unwrap_or_default());
                queries.push((file.clone(), title, expr.to_owned()));
            }
        }
    }
    queries
}

#[test]
fn promtool_and_amtool_accept_the_shipped_files() {
    tool("promtool", &["check", "config", "deploy/prometheus.yml"]);
    tool("promtool", &["check", "rules", "alerts/orchestrator.rules.yml"]);
    let test_files: Vec<String> = std::fs::read_dir(root().join("alerts/tests"))
        .unwrap()
        .flatten()
        .map(|e| format!("alerts/tests/{}", e.file_name().to_string_lossy()))
        .collect();
    assert!(!test_files.is_empty());
    let mut args = vec!["test", "rules"];
    args.extend(test_files.iter().map(String::as_str));
    let report = tool("promtool", &args);
    assert!(report.contains("SUCCESS"), "{report}");
    tool("amtool", &["check-config", "deploy/alertmanager.yml"]);
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let rules = yaml("alerts/orchestrator.rules.yml");
    let runbook = read("docs/runbook.md").to_lowercase();
    let tests = [
        "alerts/tests/orchestrator.test.yml",
        "alerts/tests/fleet.test.yml",
    ]
    .map(read)
    .join("\n");
    let source = read("alerts/orchestrator.rules.yml");
    let pattern = source
        .lines()
        .find_map(|l| l.strip_prefix("#   ").filter(|p| p.contains("%s")))
        .expect("the rules file names its runbook URL pattern")
        .trim()
        .to_owned();
    assert!(pattern.starts_with("https://"), "{pattern}");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            assert!(name.starts_with("Orchestrator"), "{name}");
            assert!(
                matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")),
                "{name}"
            );
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][key].as_str().is_some_and(|t| !t.is_empty()),
                    "{name} lacks {key}"
                );
            }
            // Absolute, from the one pattern the rules file names (scripts/runbook-urls.sh rewrites it).
            let url = rule["annotations"]["runbook_url"].as_str().unwrap();
            assert_eq!(url, pattern.replace("%s", &name.to_lowercase()), "{name}");
            let anchor = name.to_lowercase();
            assert!(
                runbook.contains(&format!("## {anchor}")),
                "no runbook section for {anchor}"
            );
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no unit test"
            );
        }
    }
    assert_eq!(alerts, 12);
}

#[test]
fn deploy_files_parse_and_their_references_hold() {
    for path in [
        "deploy/compose.yml",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/fog-orchestrator.yml",
        "otel-collector.yaml",
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/service.yaml",
        "deploy/kubernetes/secret.yaml",
        "deploy/kubernetes/servicemonitor.yaml",
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/prometheusrule.yaml",
    ] {
        yaml(path);
    }
    // Compose mounts files that exist, and Grafana is provisioned from where the dashboards are mounted.
    let compose = yaml("deploy/compose.yml");
    let mut grafana_dashboards = None;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = volume.as_str().unwrap();
            let source = volume.split(':').next().unwrap();
            assert!(
                root().join("deploy").join(source).exists(),
                "{name:?} mounts missing {source}"
            );
            if source == "../dashboards" {
                grafana_dashboards = Some(volume.split(':').nth(1).unwrap().to_owned());
            }
        }
    }
    let provider = yaml("deploy/grafana/provisioning/dashboards/fog-orchestrator.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        grafana_dashboards.as_deref()
    );
    assert_eq!(
        compose["services"]["orchestrator"]["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    for line in read("deploy/Dockerfile")
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root().join(source).exists(), "Dockerfile copies missing {source}");
    }

    // The generated Kubernetes objects match their sources (scripts/gen-kubernetes.sh).
    let rule = yaml("deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        rule["spec"]["groups"],
        yaml("alerts/orchestrator.rules.yml")["groups"],
        "run scripts/gen-kubernetes.sh"
    );
    let configmap = yaml("deploy/kubernetes/configmap.yaml");
    assert_eq!(
        configmap["data"]["orchestrator.toml"].as_str(),
        Some(read("examples/fog.toml").as_str()),
        "run scripts/gen-kubernetes.sh"
    );

    // Probes, ports and selectors agree.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(
        service["metadata"]["name"].as_str(),
        Some("fog-orchestrator"),
        "the job label the alerts expect"
    );
    let monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
}

/// The fleet's deploy files (DESIGN.md section 9): YAML that parses, mounts that exist, a node configuration
/// the orchestrator accepts with the environment the files give it, a Prometheus config promtool accepts,
/// and Kubernetes objects whose names and keys agree.
#[test]
fn fleet_deploy_files_parse_and_configure_a_valid_fleet() {
    let mut compose = yaml("deploy/fleet/compose.yml");
    compose.apply_merge().unwrap();
    for service in compose["services"].as_mapping_mut().unwrap().values_mut() {
        service.apply_merge().unwrap();
        if let Some(environment) = service.get_mut("environment") {
            environment.apply_merge().unwrap();
        }
    }
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                root().join("deploy/fleet").join(source).exists(),
                "{name:?} mounts missing {source}"
            );
        }
    }
    tool("promtool", &["check", "config", "deploy/fleet/prometheus.yml"]);
    let members: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().filter(|k| k.starts_with("etcd-")).map(str::to_owned))
        .collect();
    assert_eq!(members.len(), 3, "a 3-member etcd");
    // Every orchestrator node gets the etcd endpoints and its own name; the shared file then loads as a
    // fleet configuration with the singleton.
    let mut nodes = Vec::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let environment = &service["environment"];
        let Some(node) = environment["ORCHESTRATOR__CLUSTER__NODE"].as_str() else {
            continue;
        };
        nodes.push(node.to_owned());
        let endpoints = environment["ORCHESTRATOR__CLUSTER__ETCD_ENDPOINTS"]
            .as_str()
            .unwrap();
        for member in &members {
            assert!(
                endpoints.contains(&format!("http://{member}:2379")),
                "{name:?}: {endpoints}"
            );
        }
        let env = [
            ("ORCHESTRATOR__CLUSTER__ETCD_ENDPOINTS", endpoints),
            ("ORCHESTRATOR__CLUSTER__NODE", node),
            ("ORCHESTRATOR__API__LISTEN", "0.0.0.0:8400"),
            ("ORCHESTRATOR__API__TOKEN", "t"),
        ];
        let source = fog_orchestrator::config::Source::new(fog_orchestrator::config::ConfigFile::Path(
            root().join("deploy/fleet/orchestrator.toml"),
        ))
        .with_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let config =
            fog_orchestrator::config::Config::load(&source).expect("the fleet node's configuration loads");
        let cluster = config.cluster.clone().expect("fleet mode on");
        assert_eq!(cluster.node, node);
        assert_eq!(cluster.etcd_endpoints.len(), 3);
        assert!(config.service("scheduler").unwrap().singleton);
    }
    assert_eq!(nodes, ["a", "b", "c"]);

    // Kubernetes: the DaemonSet reaches the StatefulSet's members by their stable names.
    let etcd = yaml_documents("deploy/kubernetes/fleet/etcd.yaml");
    let statefulset = etcd.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let service = etcd.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(statefulset["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(statefulset["spec"]["replicas"].as_u64(), Some(3));
    let orchestrator = yaml_documents("deploy/kubernetes/fleet/orchestrator.yaml");
    let daemonset = orchestrator.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    let endpoints = env("ORCHESTRATOR__CLUSTER__ETCD_ENDPOINTS")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let set = statefulset["metadata"]["name"].as_str().unwrap();
    let headless = service["metadata"]["name"].as_str().unwrap();
    for i in 0..3 {
        assert!(
            endpoints.contains(&format!("http://{set}-{i}.{headless}:2379")),
            "{endpoints}"
        );
    }
    assert_eq!(
        env("ORCHESTRATOR__CLUSTER__NODE")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let configmap = orchestrator.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let toml = configmap["data"]["orchestrator.toml"].as_str().unwrap();
    let with_endpoints = format!("{toml}\n").replace(
        "[cluster]\n",
        &format!("[cluster]\netcd_endpoints = \"{endpoints}\"\n"),
    );
    let config = fog_orchestrator::config::Config::from_toml(&with_endpoints).expect("the ConfigMap loads");
    assert!(config.cluster.is_some() && config.service("scheduler").unwrap().singleton);
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .collect()
}

#[test]
fn dashboards_follow_the_conventions() {
    let mut uids = HashSet::new();
    for (file, dashboard) in dashboards() {
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_owned()),
            "{file}: duplicate uid"
        );
        assert!(dashboard.get("__inputs").is_none(), "{file}: __inputs");
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for wanted in ["datasource", "job", "instance", "service"] {
            assert!(variables.contains(&wanted), "{file}: no {wanted} variable");
        }
        let mut ids = HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                !title.is_empty() && ids.insert(panel["id"].as_i64().unwrap()),
                "{file}: panel id/title"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{file}/{title}: description"
            );
            assert!(
                panel["fieldConfig"]["defaults"]["unit"].is_string(),
                "{file}/{title}: unit"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}/{title}: hard-coded datasource"
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{file}/{title}: target datasource"
                );
                let expr = target["expr"].as_str().unwrap();
                for function in ["rate(", "increase("] {
                    for (position, _) in expr.match_indices(function) {
                        let rest = &expr[position..];
                        let window = rest
                            .split('[')
                            .nth(1)
                            .and_then(|w| w.split(']').next())
                            .unwrap_or_default();
                        // Over time: the rate interval; a single figure for the time range: the range.
                        let wanted = if target["instant"] == true {
                            "$__range"
                        } else {
                            "$__rate_interval"
                        };
                        assert_eq!(window, wanted, "{file}/{title}: {function} window in {expr}");
                    }
                }
            }
        }
    }
    assert_eq!(uids.len(), 2);
}

async fn get_json(url: &str) -> Value {
    http("GET", url, "").await.1
}

async fn post(url: &str, body: &str) -> u16 {
    http("POST", url, body).await.0
}

/// Polls `check` (an external server's state) until it yields a value, at most `limit`.
pub(crate) async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(250)).await;
    }
}

fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed ({e}); scripts/test.sh installs it from Debian"))
}

/// The shipped rules with every `for` shortened to 2 s (the shipped file keeps its durations).
fn fast_rules(dir: &Path) -> PathBuf {
    let mut rules = yaml("alerts/orchestrator.rules.yml");
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            if let Some(map) = rule.as_mapping_mut()
                && map.contains_key("for")
            {
                map.insert("for".into(), "2s".into());
            }
        }
    }
    let path = dir.join("rules.yml");
    std::fs::write(&path, serde_yaml::to_string(&rules).unwrap()).unwrap();
    path
}

/// deploy/prometheus.yml with 1 s timings and 127.0.0.1 addresses.
fn prometheus_config(dir: &Path, orchestrator: &str, alertmanager: &str, rules: &Path) -> PathBuf {
    let mut config = yaml("deploy/prometheus.yml");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    config["rule_files"] = vec![serde_yaml::Value::from(rules.display().to_string())].into();
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] =
        vec![serde_yaml::Value::from(alertmanager)].into();
    for job in config["scrape_configs"].as_sequence_mut().unwrap() {
        match job["job_name"].as_str() {
            Some("fog-orchestrator") => {
                job["static_configs"][0]["targets"] = vec![serde_yaml::Value::from(orchestrator)].into()
            }
            Some("fog-services") => {
                job["http_sd_configs"][0]["url"] =
                    format!("http://{orchestrator}/api/orchestration/sd").into();
                job["http_sd_configs"][0]["refresh_interval"] = "1s".into();
            }
            other => panic!("unexpected job {other:?}"),
        }
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// deploy/alertmanager.yml with groups sent at once, its receivers' webhooks pointed at `webhook`.
fn alertmanager_config(dir: &Path, webhook: &str) -> PathBuf {
    let mut config = yaml("deploy/alertmanager.yml");
    config["route"]["group_wait"] = "0s".into();
    config["route"]["group_interval"] = "1s".into();
    for receiver in config["receivers"].as_sequence_mut().unwrap() {
        let name = receiver["name"].as_str().unwrap().to_owned();
        receiver["webhook_configs"][0]["url"] = format!("{webhook}/{name}").into();
    }
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

fn orchestrator_config(
    web: u16,
    api: u16,
    slow: u16,
    crashy: u16,
    state: &Path,
    dead: u16,
    etcd: &str,
) -> String {
    let demo = |name: &str, port: u16| {
        format!(
            "[services.{name}]\ncommand = [\"{exe}\", \"demo-service\", \"--name\", \"{name}\", \"--listen\", \"127.0.0.1:{port}\", \
             \"--state-dir\", \"{state}\"]\nhealth.http = \"http://127.0.0.1:{port}/health\"\n",
            exe = env!("CARGO_BIN_EXE_fog-orchestrator"),
            state = state.display(),
        )
    };
    format!(
        "[registry]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"3s\"\n\
         [defaults.health]\ncheck_interval = \"500ms\"\ntimeout = \"400ms\"\nauto_recovery = false\n\
         {web}{api}depends_on = [\"web\"]\n{slow}health.failure_threshold = 1000\n\
         {crashy}[services.crashy.restart]\ninitial_delay = \"1s\"\nbackoff_base = 1.0\nmax_attempts = 3\n\
         [services.choppy]\ncommand = [\"sleep\", \"3600\"]\n\
         health.exec = [\"sh\", \"-c\", \"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; [ $((n % 4)) -ne 0 ]\"]\n\
         [services.stuck]\ncommand = [\"sleep\", \"3600\"]\nhealth.tcp = \"127.0.0.1:{dead}\"\nhealth.startup_timeout = \"1h\"\n\
         [services.leader-only]\ncommand = [\"sleep\", \"3600\"]\nsingleton = true\n\
         [cluster]\netcd_endpoints = [\"{etcd}\"]\nname = \"live\"\nnode = \"live\"\nlease_ttl = \"2s\"\n",
        count = state.with_extension("count").display(),
        web = demo("web", web),
        api = demo("api", api),
        slow = demo("slow", slow),
        crashy = demo("crashy", crashy),
    )
}

#[derive(Debug)]
struct Firing {
    alertname: String,
    service: String,
}

fn firing(alerts: &Value) -> Vec<Firing> {
    alerts["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| Firing {
            alertname: a["labels"]["alertname"].as_str().unwrap_or_default().to_owned(),
            service: a["labels"]["service"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// Expands the dashboards' Grafana variables for a query against the live Prometheus.
fn expand(expr: &str, service: &str) -> String {
    expr.replace("$__rate_interval", "4s")
        .replace("$__range", "10m")
        .replace("=~\"$job\"", "=~\"fog-orchestrator\"")
        .replace("=~\"$cluster\"", "=~\".*\"")
        .replace("=~\"$instance\"", "=~\".+\"")
        .replace("=~\"$service\"", &format!("=~\"{service}\""))
        .replace("=\"$service\"", &format!("=\"{service}\""))
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn live_prometheus_and_alertmanager_see_what_the_orchestrator_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (web, api_service, slow, crashy) = (spare_port(), spare_port(), spare_port(), spare_port());
    let state = dir.path().join("demo-state");
    let (otlp, spans) = crate::otlp::grpc_receiver().await;
    let (webhook, notifications) = webhook_receiver().await;
    // A fleet of one, on a real etcd: the fleet row has data, and killing etcd fires the fleet alerts.
    let (etcd_client, etcd_peer) = (spare_port(), spare_port());
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let mut etcd = spawn(
        "etcd",
        &[
            "--name=live".to_owned(),
            format!("--data-dir={}", dir.path().join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=live=http://127.0.0.1:{etcd_peer}"),
        ],
    );
    let config = orchestrator_config(web, api_service, slow, crashy, &state, spare_port(), &etcd_url);
    let mut orchestrator = Orchestrator::start_with(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let orch = orchestrator.api().await;
    let address = orch.trim_start_matches("http://").to_owned();

    let (prometheus_port, alertmanager_port) = (spare_port(), spare_port());
    let alertmanager_address = format!("127.0.0.1:{alertmanager_port}");
    let rules = fast_rules(dir.path());
    let prometheus_config = prometheus_config(dir.path(), &address, &alertmanager_address, &rules);
    let _prometheus = spawn(
        "prometheus",
        &[
            format!("--config.file={}", prometheus_config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
            "--enable-feature=exemplar-storage".to_owned(),
        ],
    );
    let _alertmanager = spawn(
        "prometheus-alertmanager",
        &[
            format!(
                "--config.file={}",
                alertmanager_config(dir.path(), &webhook).display()
            ),
            format!("--storage.path={}", dir.path().join("am").display()),
            format!("--web.listen-address={alertmanager_address}"),
            "--cluster.listen-address=".to_owned(),
        ],
    );
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    let query = |expr: String| {
        let prometheus = prometheus.clone();
        async move { get_json(&format!("{prometheus}/api/v1/query?query={}", urlencode(&expr))).await }
    };

    // The target is up.
    eventually(
        "the orchestrator target up",
        Duration::from_secs(60),
        async || {
            let result = query("up{job=\"fog-orchestrator\"}".into()).await;
            (result["data"]["result"][0]["value"][1] == "1").then_some(())
        },
    )
    .await;

    // Break things: web unhealthy (api depends on it and fails too, but only because of web); slow
    // degraded; crashy crashes at every start (a sticky fault); agent, a service registered at run time,
    // sends heartbeats and then falls silent.
    let registration = "{\"name\": \"agent\", \"metadata\": {\"team\": \"edge\"}}";
    assert_eq!(
        post(&format!("{orch}/api/orchestration/registry"), registration).await,
        201
    );
    for _ in 0..3 {
        assert_eq!(
            post(&format!("{orch}/api/orchestration/registry/agent/heartbeat"), "").await,
            200
        );
        sleep(Duration::from_millis(500)).await;
    }
    for port in [web, api_service, slow] {
        assert_eq!(
            post(
                &format!("http://127.0.0.1:{port}/fault"),
                "{\"mode\": \"unhealthy\"}"
            )
            .await,
            200
        );
    }
    // The singleton runs here before etcd goes.
    eventually("the singleton led here", Duration::from_secs(30), async || {
        let detail = get_json(&format!("{orch}/api/orchestration/service/leader-only")).await;
        (detail["status"] == "running").then_some(())
    })
    .await;
    etcd.start_kill().unwrap();
    let sticky_crash = "{\"mode\": \"crash\", \"sticky\": true}";
    assert_eq!(
        post(&format!("http://127.0.0.1:{crashy}/fault"), sticky_crash).await,
        200
    );
    // A configuration file with a problem: the reload is rejected, nothing changes.
    std::fs::write(orchestrator.config_path(), format!("{config}colour = \"blue\"\n")).unwrap();
    assert_eq!(post(&format!("{orch}/api/orchestration/reload"), "").await, 400);

    let expected = [
        ("OrchestratorServiceUnhealthy", "web"),
        ("OrchestratorServiceDegraded", "slow"),
        ("OrchestratorHeartbeatTimeout", "agent"),
        ("OrchestratorServiceRestartingTooOften", "crashy"),
        ("OrchestratorServiceFailed", "crashy"),
        ("OrchestratorServiceFlapping", "choppy"),
        ("OrchestratorServiceStuckStarting", "stuck"),
        ("OrchestratorConfigReloadFailed", ""),
        ("OrchestratorClusterDown", ""),
        ("OrchestratorSingletonNotRunning", "leader-only"),
    ];
    eventually(
        "every expected alert firing",
        Duration::from_secs(90),
        async || {
            let firing = firing(&get_json(&format!("{prometheus}/api/v1/alerts")).await);
            let all = expected.iter().all(|(name, service)| {
                firing
                    .iter()
                    .any(|f| f.alertname == *name && f.service == *service)
            });
            all.then_some(())
        },
    )
    .await;
    // The dependent of the broken service is unhealthy too, but does not page on its own.
    let unhealthy_api =
        query("orchestrator_service_health{service=\"api\",status=\"unhealthy\"}".into()).await;
    assert_eq!(
        unhealthy_api["data"]["result"][0]["value"][1], "1",
        "api is unhealthy"
    );
    let alerts = get_json(&format!("{prometheus}/api/v1/alerts")).await;
    let about_api: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["service"] == "api")
        .collect();
    assert!(about_api.is_empty(), "the blocked dependent pages: {about_api:?}");
    // Services that are unhealthy or failed are not paged again for their stale heartbeats.
    let stale: Vec<String> = firing(&alerts)
        .into_iter()
        .filter(|f| f.alertname == "OrchestratorHeartbeatTimeout")
        .map(|f| f.service)
        .collect();
    assert_eq!(stale, ["agent"], "only the silent service");

    // The alerts arrive in Alertmanager with their labels and annotations.
    let received = eventually("alerts in Alertmanager", Duration::from_secs(60), async || {
        let alerts = get_json(&format!("http://{alertmanager_address}/api/v2/alerts")).await;
        let names: BTreeSet<(String, String)> = alerts
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let labels = &a["labels"];
                (
                    labels["alertname"].as_str().unwrap_or_default().to_owned(),
                    labels["service"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        expected
            .iter()
            .all(|(n, s)| names.contains(&(n.to_string(), s.to_string())))
            .then_some(alerts)
    })
    .await;
    let web_alert = received
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == "OrchestratorServiceUnhealthy" && a["labels"]["service"] == "web"
        })
        .unwrap();
    assert_eq!(web_alert["labels"]["severity"], "critical");
    assert_eq!(web_alert["annotations"]["summary"], "Service web is unhealthy");
    assert!(
        web_alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("/docs/runbook.md#orchestratorserviceunhealthy")
    );
    assert!(
        web_alert["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("web")
    );

    // The file fixed and reloaded: the reload annotation gets its event, and the rejection alert ends.
    std::fs::write(orchestrator.config_path(), &config).unwrap();
    assert_eq!(post(&format!("{orch}/api/orchestration/reload"), "").await, 200);
    eventually(
        "the reload seen by Prometheus",
        Duration::from_secs(30),
        async || {
            let result = query("orchestrator_config_last_reload_successful == 1".into()).await;
            result["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
                .then_some(())
        },
    )
    .await;

    // Every dashboard query is valid PromQL and returns data (for at least one candidate service).
    for (file, title, expr) in dashboard_queries() {
        let candidates: &[&str] = if file == "overview.json" {
            &[".+"]
        } else {
            &["web", "agent", "crashy", "slow"]
        };
        // Annotations mark events over the dashboard's range; at one instant, look back over the whole run.
        let expr = if title.starts_with("annotation") {
            expr.replace("$__rate_interval", "$__range")
        } else {
            expr
        };
        let mut any_data = false;
        for service in candidates {
            let result = query(expand(&expr, service)).await;
            assert_eq!(result["status"], "success", "{file}/{title}: {expr}\n{result}");
            any_data |= result["data"]["result"].as_array().is_some_and(|r| !r.is_empty());
        }
        assert!(any_data, "{file}/{title}: no data for {expr}");
    }

    // Every metric the dashboards and rules name is one the orchestrator exports.
    let exported = http_text("GET", &format!("{orch}/metrics"), "").await.1;
    let mut sources: Vec<String> = dashboard_queries().into_iter().map(|(_, _, e)| e).collect();
    let rules = read("alerts/orchestrator.rules.yml");
    let rules: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    sources.push(rules.join("\n"));
    for source in sources {
        // Metric names only: label values ("process_down") are quoted.
        let unquoted: String = source
            .split('"')
            .enumerate()
            .map(|(i, part)| if i % 2 == 0 { part } else { " " })
            .collect();
        for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("orchestrator_") || word.starts_with("process_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                assert!(
                    exported.contains(&format!("\n{word}")) || exported.contains(&format!("# TYPE {base} ")),
                    "{word} is not exported"
                );
            }
        }
    }

    // Prometheus scraped OpenMetrics: the restart counter's exemplar names a trace the receiver got.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exemplars = eventually("a restart exemplar", Duration::from_secs(30), async || {
        let url = format!(
            "{prometheus}/api/v1/query_exemplars?query={}&start={}&end={}",
            urlencode("orchestrator_service_restarts_total{service=\"crashy\"}"),
            now - 600,
            now + 60
        );
        let result = get_json(&url).await;
        let ids: Vec<String> = result["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
            .collect();
        (!ids.is_empty()).then_some(ids)
    })
    .await;

    // One incident pages once: crashy's restarts warned, its failure paged, and nothing else about it
    // paged. (Checked after every alert above has had time to notify.)
    sleep(Duration::from_secs(3)).await;
    let pages: Vec<(String, String)> = notifications
        .lock()
        .unwrap()
        .iter()
        .filter(|(receiver, body)| receiver == "pager" && body["status"] == "firing")
        .flat_map(|(_, body)| {
            body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a["status"] == "firing")
                .map(|a| {
                    let name = a["labels"]["alertname"].as_str().unwrap_or_default().to_owned();
                    let service = a["labels"]["service"].as_str().unwrap_or_default().to_owned();
                    (name, service)
                })
        })
        .collect();
    let crashy_pages: Vec<&(String, String)> = pages.iter().filter(|(_, s)| s == "crashy").collect();
    assert_eq!(
        crashy_pages,
        [&("OrchestratorServiceFailed".to_owned(), "crashy".to_owned())],
        "a failed service pages exactly once; pages: {pages:?}"
    );
    assert!(
        pages
            .iter()
            .all(|(_, s)| s != "api" && s != "slow" && s != "choppy" && s != "stuck"),
        "only root causes page: {pages:?}"
    );

    assert_eq!(orchestrator.stop().await.code(), Some(0));
    let exported: BTreeSet<String> = spans
        .spans()
        .iter()
        .map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(
        exemplars.iter().any(|id| exported.contains(id)),
        "exemplar trace ids {exemplars:?} were not exported"
    );

    // The orchestrator gone: down, and absent once its target leaves the configuration.
    eventually("OrchestratorDown firing", Duration::from_secs(60), async || {
        let firing = firing(&get_json(&format!("{prometheus}/api/v1/alerts")).await);
        firing
            .iter()
            .any(|f| f.alertname == "OrchestratorDown")
            .then_some(())
    })
    .await;
    // Absent: a Prometheus whose configuration lost the orchestrator's target (as service discovery
    // would). A removed target's last `up` lingers for the 5-minute lookback in the running one, so a
    // second Prometheus with the same rules and no such target shows it in seconds.
    let mut without_target = yaml(&prometheus_config.display().to_string());
    let jobs = without_target["scrape_configs"].as_sequence_mut().unwrap();
    jobs.retain(|job| job["job_name"] != "fog-orchestrator");
    let lost = dir.path().join("prometheus-lost.yml");
    std::fs::write(&lost, serde_yaml::to_string(&without_target).unwrap()).unwrap();
    let other_port = spare_port();
    let _other = spawn(
        "prometheus",
        &[
            format!("--config.file={}", lost.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb-lost").display()),
            format!("--web.listen-address=127.0.0.1:{other_port}"),
        ],
    );
    eventually("OrchestratorAbsent firing", Duration::from_secs(60), async || {
        let alerts = get_json(&format!("http://127.0.0.1:{other_port}/api/v1/alerts")).await;
        firing(&alerts)
            .iter()
            .any(|f| f.alertname == "OrchestratorAbsent")
            .then_some(())
    })
    .await;
}

/// Alertmanager's webhooks: every notification's receiver (the last path segment) and JSON body.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let receiver = request.uri().path().trim_start_matches('/').to_owned();
                            let body = http_body_util::BodyExt::collect(request.into_body())
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            sink.lock().unwrap().push((receiver, body));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}"), received)
}
