//! The operator's files in docs/operations/ are true: the alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), and every corecast metric the rules
//! and the Grafana dashboard query is one a live server exposes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn ops(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/operations")
        .join(file)
}

/// Runs promtool with `args` in docs/operations/; `None` when promtool is missing outside
/// CI (the check is then skipped with a note; `.ci/run` installs Debian's prometheus).
fn promtool(args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(ops(""))
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not found ({e}): skipped; apt-get install prometheus");
            return None;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    Some(text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if let Some(out) = promtool(&["check", "rules", "corecast-alerts.yml"]) {
        assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    }
    if let Some(out) = promtool(&["test", "rules", "corecast-alerts.test.yml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// `corecast_*` names in `text` (metric names end where a name character stops).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("corecast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_query_metrics_that_exist() {
    let server = start(|c| c.server.admin = Some("127.0.0.1:0".parse().unwrap()));
    let admin = server.server().admin_addr().unwrap();
    let (_, _, exposition) = http_get(admin, "/metrics", &[]);
    let exposed: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let rules = std::fs::read_to_string(ops("corecast-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(ops("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    for (what, text) in [("rules", rules), ("dashboard", exprs.join("\n"))] {
        let used = metric_names(&text);
        assert!(used.len() >= 6, "{what}: {used:?}");
        for name in used {
            // A summary's series are its family's name, `_sum` and `_count`.
            let family = name
                .strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .filter(|f| exposed.contains(*f))
                .unwrap_or(&name);
            assert!(
                exposed.contains(family),
                "{what} queries {name}, which is not exposed"
            );
        }
    }
}

#[test]
fn the_systemd_unit_runs_the_binary_with_the_documented_limits() {
    let unit = std::fs::read_to_string(ops("corecast.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/corecast serve --config /etc/corecast/corecast.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
}
