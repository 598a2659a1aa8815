//! The JavaScript client, `<corecast-status>` and the dashboard in a real browser: runs
//! tests/browser/run.mjs (node, playwright-core driving Debian's chromium) against this build's
//! `corecast` binary. Also the client's logic against a scripted server in node alone
//! (tests/browser/client-unit.mjs: what a real server does not do on cue). What each checks is
//! written at the top of its file and in docs/clients.md, "How it is tested"; the browser run's
//! screenshots go to target/browser-screenshots/ (the ones in docs/screenshots/ are copies).
//!
//! Needs node, `npm ci` in tests/browser/ and /usr/bin/chromium, which `.ci/run` installs. Where
//! one is missing the test says so and passes, except under CI (`CI` set), where it fails.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing to run `needs` (`node`, and for the browser run playwright-core and
/// chromium), if anything. Under CI a missing piece is a failure, elsewhere a skip.
fn missing(browser: bool) -> Option<String> {
    let why = if Command::new("node").arg("--version").output().is_err() {
        Some("node is not installed".to_string())
    } else if browser
        && !root()
            .join("tests/browser/node_modules/playwright-core")
            .exists()
    {
        Some("playwright-core is not installed: npm ci --prefix tests/browser".into())
    } else {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        (browser && !Path::new(&chromium).exists())
            .then(|| format!("{chromium} is missing: apt-get install chromium"))
    };
    if let Some(why) = &why {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test cannot run under CI: {why}"
        );
        eprintln!("skipped: {why}");
    }
    why
}

/// Runs `node tests/browser/<script>` with `env`; asserts it succeeded and printed `done`.
fn node(script: &str, env: &[(&str, &std::ffi::OsStr)], done: &str) {
    let out = Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .envs(env.iter().copied())
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains(done), "{script} did not finish:\n{text}");
}

#[test]
fn client_status_element_and_dashboard_in_chromium() {
    if missing(true).is_some() {
        return;
    }
    let shots = root().join("target/browser-screenshots");
    node(
        "run.mjs",
        &[
            ("CORECAST_BIN", env!("CARGO_BIN_EXE_corecast").as_ref()),
            ("SCREENSHOTS", shots.as_os_str()),
        ],
        "all browser tests passed",
    );
}

#[test]
fn client_logic_against_a_scripted_server_in_node() {
    if missing(false).is_some() {
        return;
    }
    node("client-unit.mjs", &[], "[client-unit] all passed");
}
