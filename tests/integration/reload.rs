//! Reload (issue 13, first part): the configuration file read again through SIGHUP, `POST /reload` and
//! `fog-orchestrator reload`, answered with the plan. Applying a plan is not built yet: nothing changes,
//! and the tests say so.

use serde_json::Value;

use crate::binary::{Orchestrator, http, http_text, signal};

const BEFORE: &str = r#"
[services.keep]
command = ["sleep", "3600"]
[services.change]
command = ["sleep", "3601"]
[services.gone]
command = ["sleep", "3602"]
[services.tuned]
command = ["sleep", "3603"]
"#;

const AFTER: &str = r#"
[services.keep]
command = ["sleep", "3600"]
[services.change]
command = ["sleep", "3700"]
[services.tuned]
command = ["sleep", "3603"]
shutdown.timeout = "3s"
[services.new]
command = ["sleep", "3604"]
depends_on = ["keep"]
"#;

/// A cycle and an unknown key: two problems, both reported.
const BROKEN: &str = r#"
[services.keep]
command = ["sleep", "3600"]
depends_on = ["change"]
[services.change]
command = ["sleep", "3601"]
depends_on = ["keep"]
colour = "blue"
"#;

fn names(plan: &Value, key: &str) -> Vec<String> {
    plan[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {plan}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn pid_of(api: &str, name: &str) -> u64 {
    let (status, detail) = http("GET", &format!("{api}/api/orchestration/service/{name}"), "").await;
    assert_eq!(status, 200, "{detail}");
    detail["pid"]
        .as_u64()
        .or_else(|| detail["service"]["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid in {detail}"))
}

/// The CLI against the live orchestrator: exit code, stdout, stderr.
async fn cli_reload(api: &str, extra: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
        .args(["reload", "--api", api])
        .args(extra)
        .env_remove("ORCHESTRATOR_CONFIG")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sighup_the_api_and_the_cli_report_the_same_plan_and_change_nothing() {
    let mut orchestrator = Orchestrator::start(BEFORE);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let kept_pid = pid_of(&api, "keep").await;
    std::fs::write(orchestrator.config_path(), AFTER).unwrap();

    let url = format!("{api}/api/orchestration/reload?dry_run=true");
    let (status, answer) = http("POST", &url, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert_eq!(answer["changed"], true);
    let plan = &answer["plan"];
    assert_eq!(names(plan, "add"), ["new"]);
    assert_eq!(names(plan, "remove"), ["gone"]);
    assert_eq!(names(plan, "untouched"), ["keep"]);
    assert_eq!(
        plan["restart"],
        serde_json::json!([{"service": "change", "keys": ["command"]}])
    );
    assert_eq!(
        plan["update"],
        serde_json::json!([{"service": "tuned", "keys": ["shutdown.timeout"]}])
    );

    let (code, stdout, stderr) = cli_reload(&api, &["--dry-run"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "  add: new\n",
        "  remove: gone\n",
        "  restart: change (command)\n",
        "  update live: tuned (shutdown.timeout)\n",
        "  untouched: keep\n",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }

    // SIGHUP used to end the process (its default action); now it reports the same plan.
    signal(orchestrator.pid(), libc::SIGHUP);
    let reported = orchestrator
        .wait_for("the SIGHUP plan", |f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SIGHUP: configuration read again"))
        })
        .await;
    let logged: Value = serde_json::from_str(reported["plan"].as_str().unwrap()).unwrap();
    assert_eq!(&logged, plan, "SIGHUP and the API disagree");

    // Nothing was applied: the same processes run, the removed service is still there.
    assert_eq!(pid_of(&api, "keep").await, kept_pid);
    let (_, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert!(services["services"]["gone"].is_object(), "{services}");
    assert!(services["services"]["new"].is_null(), "{services}");

    // Without dry_run: refused, and said why.
    let (status, text) = http_text("POST", &format!("{api}/api/orchestration/reload"), "").await;
    assert_eq!(status, 400);
    assert!(text.contains("dry_run=true is required"), "{text}");
    let (code, _, stderr) = cli_reload(&api, &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("dry_run=true is required"), "{stderr}");

    assert!(orchestrator.stop().await.success());
}

#[tokio::test]
async fn a_broken_file_reports_every_problem_and_changes_nothing() {
    let mut orchestrator = Orchestrator::start(BEFORE);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    std::fs::write(orchestrator.config_path(), BROKEN).unwrap();

    let url = format!("{api}/api/orchestration/reload?dry_run=true");
    let (status, answer) = http("POST", &url, "").await;
    assert_eq!(status, 400, "{answer}");
    let problems: Vec<&str> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("cycle")), "{problems:?}");

    let (code, _, stderr) = cli_reload(&api, &["--dry-run"]).await;
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("colour") && stderr.contains("cycle"), "{stderr}");

    signal(orchestrator.pid(), libc::SIGHUP);
    orchestrator
        .wait_for("the SIGHUP refusal", |f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SIGHUP: the configuration has problems"))
        })
        .await;
    let (status, _) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert_eq!(status, 200);
    assert!(orchestrator.stop().await.success());
}
