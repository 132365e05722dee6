//! Browser tests of the web client: headless Chromium, driven by Playwright
//! scripts in tests/browser/, against the real server started in this
//! process.
//!
//! Each test starts a server, then runs `node tests/browser/<script>.mjs
//! <server url> <data dir>` and asserts that it exits with status 0. A
//! script can ask for the server to be stopped or started again on the same
//! address by printing `@@stop-server` or `@@start-server`; the test answers
//! `ok` on the script's standard input once that is done.
//!
//! The tests need /usr/bin/chromium (Debian's chromium package, or
//! CHROMIUM_PATH), Node.js 20 or later and `npm ci` in tests/browser. When
//! one is missing they fail if the CI environment variable is set, and
//! otherwise pass after printing what to install.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aura::config::ServeArgs;
use common::TestServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Maximum run time of one script. The scripts' own waits are much shorter.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

/// Chromium uses both cores, so the scripts run one at a time.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("browser")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Returns what is missing to run the browser tests, if anything.
fn missing_tools() -> Option<String> {
    let mut missing = Vec::new();
    if !chromium_path().exists() {
        missing.push(format!(
            "Chromium at {} (apt-get install chromium, or set CHROMIUM_PATH)",
            chromium_path().display()
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !matches!(node, Ok(ref output) if output.status.success()) {
        missing.push("Node.js 20 or later (node on PATH)".to_string());
    }
    if !scripts_dir().join("node_modules").join("playwright-core").exists() {
        missing.push("playwright-core (run npm ci in tests/browser)".to_string());
    }
    if missing.is_empty() {
        None
    } else {
        Some(missing.join("; "))
    }
}

/// Returns false after printing a skip message when the tools are missing
/// outside CI; panics when they are missing in CI.
fn tools_available(test: &str) -> bool {
    let Some(missing) = missing_tools() else { return true };
    if std::env::var_os("CI").is_some() {
        panic!("browser test {test} cannot run: missing {missing}");
    }
    // Written to stderr directly, because the test harness hides what
    // eprintln! prints from a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED browser test {test}: missing {missing}. Install them to run the browser tests."
    );
    false
}

/// Runs one script against `server` and asserts that it passes. Returns the
/// server, which may have been restarted on the same address.
async fn run_script(script: &str, server: TestServer, screenshot_dir: Option<&str>) -> TestServer {
    let mut command = Command::new("node");
    command
        .arg(scripts_dir().join(format!("{script}.mjs")))
        .arg(server.url(""))
        .arg(server.data_dir())
        .current_dir(scripts_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match screenshot_dir {
        Some(dir) => command.env("AURA_SCREENSHOT_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)),
        None => command.env_remove("AURA_SCREENSHOT_DIR"),
    };
    let mut child = command.spawn().expect("node starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let addr = server.addr;
    let mut server = Some(server);
    let mut dir = None;
    let mut output = String::new();
    let run = async {
        while let Some(line) = stdout.next_line().await.expect("script output reads") {
            match line.as_str() {
                "@@stop-server" => {
                    let running = server.take().expect("the server is running when the script stops it");
                    dir = Some(running.stop().await);
                }
                "@@start-server" => {
                    let data = dir.take().expect("the server is stopped when the script starts it");
                    server = Some(TestServer::start_on(data, addr).await);
                }
                _ => {
                    println!("{script}: {line}");
                    output.push_str(&line);
                    output.push('\n');
                    continue;
                }
            }
            stdin.write_all(b"ok\n").await.expect("script reads its input");
            stdin.flush().await.unwrap();
        }
        child.wait().await.expect("node exits")
    };
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("browser script {script} did not finish in {SCRIPT_TIMEOUT:?}"));
    let errors = stderr_task.await.unwrap();
    eprint!("{errors}");
    assert!(
        status.success(),
        "browser script {script} failed with {status}:\n{output}{errors}"
    );
    match server {
        Some(server) => server,
        None => {
            let data = dir.expect("a stopped server left its data directory");
            TestServer::start_on(data, addr).await
        }
    }
}

async fn run_browser_test(script: &str, screenshot_dir: Option<&str>) {
    run_browser_test_with(script, screenshot_dir, |_| {}).await;
}

/// Runs a script against a server started with adjusted flags.
async fn run_browser_test_with(script: &str, screenshot_dir: Option<&str>, adjust: impl FnOnce(&mut ServeArgs)) {
    if !tools_available(script) {
        return;
    }
    let _turn = BROWSER.lock().await;
    let server = TestServer::start_with(adjust).await;
    let server = run_script(script, server, screenshot_dir).await;
    server.stop().await;
}

#[tokio::test]
async fn two_users_chat_live() {
    run_browser_test("live_chat", None).await;
}

#[tokio::test]
async fn markup_renders_as_text() {
    run_browser_test("escaping", None).await;
}

#[tokio::test]
async fn reorder_reaches_other_user() {
    run_browser_test("reorder", None).await;
}

#[tokio::test]
async fn narrow_screen_has_no_horizontal_scroll() {
    run_browser_test("narrow", None).await;
}

#[tokio::test]
async fn long_channel_stays_in_place() {
    run_browser_test("history", None).await;
}

#[tokio::test]
async fn rate_limit_says_when_to_retry() {
    run_browser_test_with("rate_limit", None, |args| {
        args.send_burst = 3;
        args.send_per_second = 1.0;
    })
    .await;
}

#[tokio::test]
async fn restart_keeps_view_exact() {
    run_browser_test("restart", None).await;
}

/// Saves the screenshots of the README to docs/screenshots. Run with
/// `cargo test --test browser -- --ignored`.
#[tokio::test]
#[ignore = "writes docs/screenshots; run on purpose after UI changes"]
async fn screenshots_refresh() {
    run_browser_test("screenshots", Some("docs/screenshots")).await;
}
