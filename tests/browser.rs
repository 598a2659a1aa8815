//! The JavaScript client, `<corecast-status>` and the dashboard in a real browser: runs
//! tests/browser/run.mjs (node, playwright-core driving Debian's chromium) against this build's
//! `corecast` binary. Also the client's logic against a scripted server in node alone
//! (tests/browser/client-unit.mjs: what a real server does not do on cue). What it checks is written at the top of that file and in docs/clients.md;
//! its screenshots go to target/browser-screenshots/ (the ones in docs/screenshots/ are copies).
//!
//! Needs node, `npm ci` in tests/browser/ and /usr/bin/chromium, which `.ci/run` installs. Where
//! one is missing the test says so and passes, except under CI (`CI` set), where it fails.

use std::path::Path;
use std::process::Command;

fn missing() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("playwright-core is not installed: npm ci --prefix tests/browser".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing: apt-get install chromium"));
    }
    None
}

#[test]
fn client_status_element_and_dashboard_in_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser tests cannot run under CI: {why}"
        );
        eprintln!("browser tests skipped: {why}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("tests/browser/run.mjs"))
        .env("CORECAST_BIN", env!("CARGO_BIN_EXE_corecast"))
        .env("SCREENSHOTS", root.join("target/browser-screenshots"))
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the browser tests failed:\n{text}");
    assert!(
        text.contains("all browser tests passed"),
        "the run did not finish:\n{text}"
    );
}

#[test]
fn client_logic_against_a_scripted_server_in_node() {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "node is needed under CI");
        eprintln!("client logic tests skipped: node is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("tests/browser/client-unit.mjs"))
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the client logic tests failed:\n{text}"
    );
    assert!(text.contains("[client-unit] all passed"), "{text}");
}
