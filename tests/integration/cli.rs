//! The `fog-orchestrator` binary on good and bad configurations: exit codes, output and messages.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const SEED_GRAPH: &str = include_str!("../data/seed_graph.txt");
const EXIT_CONFIG: i32 = 78;

/// Runs the binary in `dir` with no `ORCHESTRATOR*` variables from the caller's environment.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("ORCHESTRATOR") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("the binary runs")
}

fn run(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    run_in(dir.path(), args, &[])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn graph_prints_the_seed_block_byte_for_byte() {
    let output = run(&["graph"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), SEED_GRAPH);
}

#[test]
fn graph_json_is_the_dependencies_body() {
    let output = run(&["graph", "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["success"], true);
    let startup: Vec<&str> = body["startup_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(startup[..3], ["dao", "scheduler", "edge"]);
    assert_eq!(body["shutdown_order"][0], "bitchat");
    assert_eq!(body["shutdown_order"][1], "betanet");
    assert_eq!(body["dependencies"]["harvest"]["dependencies"][0], "edge");
    assert_eq!(body["dependencies"]["harvest"]["layer"], 2);
    assert_eq!(
        body["visualization"].as_str().unwrap(),
        SEED_GRAPH.trim_end_matches('\n')
    );
}

#[test]
fn graph_dot_is_graphviz() {
    let output = run(&["graph", "-f", "dot"]);
    assert_eq!(output.status.code(), Some(0));
    let dot = stdout(&output);
    assert!(dot.starts_with("digraph dependencies {"));
    assert!(dot.contains("\"betanet\" -> \"onion\" [style=dashed"));
}

#[test]
fn check_summarises_a_valid_configuration() {
    let output = run(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("configuration ok: the embedded FOG topology"),
        "{text}"
    );
    assert!(
        text.contains("10 services (1 critical, 0 external) in 6 layers"),
        "{text}"
    );
    assert!(text.contains("0 warning(s)"), "{text}");
}

#[test]
fn check_reports_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "bad.toml",
        r#"
        [services.a]
        depends_on = ["b"]
        [services.b]
        depends_on = ["a"]
        [services.c]
        depends_on = ["nowhere"]
        command = []
        [services.c.health]
        timeout = "1h"
        "#,
    );
    let output = run_in(dir.path(), &["check", "--config", &path], &[]);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG));
    let text = stderr(&output);
    assert!(text.contains("(4 problems)"), "{text}");
    assert!(text.contains("services: dependency cycle: a -> b -> a"), "{text}");
    assert!(
        text.contains("services.c.depends_on: service \"c\" depends on unknown service \"nowhere\""),
        "{text}"
    );
    assert!(text.contains("services.c.command"), "{text}");
    assert!(
        text.contains("services.c.health.timeout: \"1h\" must be shorter than check_interval \"30s\""),
        "{text}"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn a_missing_or_unparsable_file_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run_in(dir.path(), &["check", "--config", "nope.toml"], &[]);
    assert_eq!(missing.status.code(), Some(EXIT_CONFIG));
    assert!(
        stderr(&missing).contains("nope.toml: no such file"),
        "{}",
        stderr(&missing)
    );

    let path = write_config(dir.path(), "broken.toml", "[services.a\n");
    let broken = run_in(dir.path(), &["graph", "--config", &path], &[]);
    assert_eq!(broken.status.code(), Some(EXIT_CONFIG));
    assert!(stderr(&broken).contains("broken.toml"), "{}", stderr(&broken));
}

#[test]
fn the_config_file_comes_from_the_environment_or_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "env.toml", "[services.from_env]\n");
    let output = run_in(dir.path(), &["graph"], &[("ORCHESTRATOR_CONFIG", &path)]);
    assert!(stdout(&output).contains("• from_env"), "{}", stdout(&output));

    write_config(dir.path(), "orchestrator.toml", "[services.from_cwd]\n");
    let output = run_in(dir.path(), &["graph"], &[]);
    assert!(stdout(&output).contains("• from_cwd"), "{}", stdout(&output));
}

#[test]
fn environment_overrides_are_validated_too() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(
        dir.path(),
        &["check"],
        &[("ORCHESTRATOR__DEFAULTS__RESTART__JITTER", "3")],
    );
    assert_eq!(output.status.code(), Some(EXIT_CONFIG));
    assert!(
        stderr(&output).contains("defaults.restart.jitter: 3 is outside 0.0..=1.0"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_optional_dependencies_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "warn.toml",
        "[services.web]\noptional_depends_on = [\"cache\"]\n",
    );
    let output = run_in(dir.path(), &["check", "-c", &path], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("warning: services.web.optional_depends_on"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).contains("1 warning(s)"));
}

#[test]
fn help_and_version_explain_themselves() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for word in ["run", "check", "graph", "--config", "ORCHESTRATOR_CONFIG"] {
        assert!(text.contains(word), "--help does not mention {word}:\n{text}");
    }
    let version = run(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!("fog-orchestrator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_arguments_are_usage_errors() {
    let output = run(&["graph", "--format", "svg"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("svg"));
}

#[test]
fn run_refuses_a_taken_api_address_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = run(&["run", "--listen", &address]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains(&format!("cannot listen on {address}")), "{text}");
    assert!(!text.contains("service ready"), "no service was started: {text}");
}
