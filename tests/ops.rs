//! Operations: the systemd unit, backups and restores, `aura verify`,
//! metrics and logs.

mod common;
mod spawn;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestServer};
use serde_json::Value;
use spawn::{run_aura, unit_stop_timeout, Api, ServerProcess};

/// Combined stdout and stderr of a finished command, for assert messages.
fn output_text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `aura backup DEST --data-dir DATA_DIR` on a blocking thread, so
/// that an in-process server can serve it.
async fn backup(data_dir: &Path, dest: &Path) -> Output {
    let args = ["backup".to_string(), dest.display().to_string(), "--data-dir".into(), data_dir.display().to_string()];
    tokio::task::spawn_blocking(move || run_aura(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// Runs `aura verify DIR` on a blocking thread.
async fn verify(dir: &Path) -> Output {
    let dir = dir.display().to_string();
    tokio::task::spawn_blocking(move || run_aura(&["verify", &dir])).await.unwrap()
}

/// Contents of every message stored in a channel, oldest first.
async fn contents(client: &Client, channel: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut after = "0".to_string();
    for _ in 0..1000 {
        let (status, body) = client
            .get_json(&format!("/api/channels/{channel}/messages?after={after}&limit=200"))
            .await;
        assert_eq!(status, 200, "polling succeeds: {body}");
        let page = body["messages"].as_array().unwrap();
        for message in page {
            found.push(message["content"].as_str().unwrap().to_string());
            after = message["rev"].as_str().unwrap().to_string();
        }
        if body["has_more"] != true {
            return found;
        }
    }
    panic!("polling did not reach the end within 1000 pages");
}

/// Parses the unlabelled samples of an OpenMetrics text into name -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.contains('{'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn systemd_unit_passes_verify() {
    let analyze = match Command::new("systemd-analyze").arg("--version").output() {
        Ok(output) if output.status.success() => "systemd-analyze",
        _ => {
            println!("skipped: systemd-analyze is not installed (.ci/run installs it)");
            return;
        }
    };
    // verify checks that ExecStart names an executable, so the copy points
    // at the binary that cargo built; everything else is the shipped unit.
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/aura.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/aura serve\n"),
        "the unit runs /usr/local/bin/aura serve, the path docs/deploy.md installs to"
    );
    let rewritten = unit.replace(
        "ExecStart=/usr/local/bin/aura serve",
        &format!("ExecStart={} serve", env!("CARGO_BIN_EXE_aura")),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aura.service");
    std::fs::write(&path, rewritten).unwrap();

    let output = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let text = output_text(&output);
    assert!(output.status.success(), "systemd-analyze verify succeeds:\n{text}");
    // Unknown or misspelt options are only warnings with exit status 0.
    assert!(text.trim().is_empty(), "systemd-analyze verify prints no warning:\n{text}");
}

#[test]
fn unit_stop_timeout_exceeds_drain() {
    let default_drain = aura::config::ServeArgs::for_tests("/tmp/x").validate().unwrap().drain;
    let timeout = unit_stop_timeout();
    assert!(
        timeout >= default_drain + Duration::from_secs(5),
        "TimeoutStopSec ({timeout:?}) leaves at least 5 s after the default --drain-ms ({default_drain:?}) for the final flush"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_sending_restores() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "ana").await;
    let general = admin.channel_id("general").await;
    for i in 0..20 {
        let (status, body) = admin.post_message(&general, &format!("m{i}"), &format!("n{i}")).await;
        assert_eq!(status, 201, "message {i} is sent: {body}");
    }

    // A sender keeps writing while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let admin = admin.clone();
        let general = general.clone();
        let stop = stop.clone();
        async move {
            let mut sent = 20;
            while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                let (status, _) = admin.post_message(&general, &format!("m{sent}"), &format!("n{sent}")).await;
                assert_eq!(status, 201, "message {sent} is sent during the backup");
                sent += 1;
            }
            sent
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dest = tempfile::tempdir().unwrap();
    let output = backup(server.data_dir(), dest.path()).await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    assert!(output.status.success(), "aura backup succeeds against the running server:\n{}", output_text(&output));
    assert!(dest.path().join("db").is_dir(), "the backup holds a database directory");

    let checked = verify(dest.path()).await;
    assert!(checked.status.success(), "aura verify passes on the backup:\n{}", output_text(&checked));

    let restored = TestServer::start_in(dest, |_| {}).await;
    let login = Client::login(&restored, "ana").await;
    let stored = contents(&login, &general).await;
    println!("sent {sent} messages; the backup holds {}", stored.len());
    let expected: Vec<String> = (0..stored.len()).map(|i| format!("m{i}")).collect();
    assert!(stored.len() >= 20, "the backup holds the 20 messages sent before it started, found {}", stored.len());
    assert!(stored.len() <= sent, "the backup holds no message that was never sent");
    assert_eq!(stored, expected, "the backup holds the messages sent before a moment, in order, with no gap");
    restored.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn backup_of_stopped_server_verifies() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "ana").await;
    let general = admin.channel_id("general").await;
    let (status, body) = admin.post_message(&general, "kept", "kept").await;
    assert_eq!(status, 201, "the message is sent: {body}");
    let data = server.stop().await;

    let dest = tempfile::tempdir().unwrap();
    let output = backup(data.path(), &dest.path().join("copy")).await;
    assert!(output.status.success(), "aura backup succeeds on a stopped server:\n{}", output_text(&output));
    let checked = verify(&dest.path().join("copy")).await;
    assert!(checked.status.success(), "aura verify passes on the copy:\n{}", output_text(&checked));
    let report = String::from_utf8_lossy(&checked.stdout).into_owned();
    let messages_line = report.lines().find(|line| line.trim_start().starts_with("messages ")).unwrap_or_default();
    assert!(messages_line.trim_end().ends_with(" 1"), "verify counts the one message:\n{report}");
}

#[tokio::test]
async fn backup_rejects_nonempty_destination() {
    let server = TestServer::start().await;
    let dest = tempfile::tempdir().unwrap();
    std::fs::write(dest.path().join("notes.txt"), "keep me").unwrap();
    let output = backup(server.data_dir(), dest.path()).await;
    assert!(!output.status.success(), "aura backup into a non-empty directory fails");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not empty"),
        "the error says the destination is not empty:\n{}",
        output_text(&output)
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("notes.txt")).unwrap(),
        "keep me",
        "the existing file is untouched"
    );
    server.stop().await;
}

#[tokio::test]
async fn verify_refuses_running_server() {
    let server = TestServer::start().await;
    let output = verify(server.data_dir()).await;
    assert!(!output.status.success(), "aura verify on a running server's directory fails");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("in use by a running server"),
        "the error says the directory is in use:\n{}",
        output_text(&output)
    );
    let response = common::http().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the server keeps running");
    server.stop().await;
}

#[tokio::test]
async fn verify_reports_broken_indexes() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "ana").await;
    let general = admin.channel_id("general").await;
    for i in 0..3 {
        let (status, body) = admin.post_message(&general, &format!("m{i}"), &format!("n{i}")).await;
        assert_eq!(status, 201, "message {i} is sent: {body}");
    }
    let data = server.stop().await;

    let clean = verify(data.path()).await;
    assert!(clean.status.success(), "aura verify passes before the damage:\n{}", output_text(&clean));

    {
        let db = sled::open(data.path().join("db")).unwrap();
        let revs = db.open_tree("revs").unwrap();
        let (first, _) = revs.iter().next().unwrap().unwrap();
        revs.remove(first).unwrap();
        let channel_of = db.open_tree("channel_of").unwrap();
        channel_of.insert(42u64.to_be_bytes(), aura::store::records::encode(&7u64)).unwrap();
        db.open_tree("users").unwrap().insert(99u64.to_be_bytes(), vec![1u8, 0xff]).unwrap();
        db.flush().unwrap();
    }

    let output = verify(data.path()).await;
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "aura verify exits 1 on a damaged database:\n{text}");
    assert!(text.contains("has no revs entry"), "verify names the message without a revs entry:\n{text}");
    assert!(text.contains("points at missing message 42"), "verify names the channel_of entry without a message:\n{text}");
    assert!(text.contains("does not decode"), "verify names the record that does not decode:\n{text}");
    assert!(text.contains("3 problems found"), "verify counts the three problems:\n{text}");
}

#[tokio::test]
async fn periodic_backups_keep_newest() {
    let backups = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|args| {
        args.backup_dir = Some(backups.path().to_path_buf());
        args.backup_every = Duration::from_secs(1);
        args.backup_keep = 2;
    })
    .await;

    // Wait until four backups were seen: the prune after the third one
    // has run by then, because each prune finishes before the next backup.
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        for entry in std::fs::read_dir(backups.path()).unwrap() {
            seen.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
        if seen.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 4, "four periodic backups are written within 30 s, saw {seen:?}");
    server.stop().await;

    let oldest = seen.iter().next().unwrap();
    assert!(!backups.path().join(oldest).exists(), "the oldest backup {oldest} was deleted");
    let remaining: Vec<_> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("db").is_dir())
        .collect();
    // The stop can fall between a new backup and its prune.
    assert!(
        (2..=3).contains(&remaining.len()),
        "two backups are kept (three while a prune is due): {remaining:?}"
    );
    for path in remaining {
        let output = verify(&path).await;
        assert!(output.status.success(), "aura verify passes on {}:\n{}", path.display(), output_text(&output));
    }
}

#[tokio::test]
async fn metrics_count_messages_and_connections() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "ana").await;
    let general = admin.channel_id("general").await;
    let mut socket = admin.connect(&server).await;
    socket.subscribe(&general, None, 10).await;
    socket.send_message(&general, "counted", "m1").await;

    let response = common::http().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200, "a loopback client reads /metrics");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "the content type is OpenMetrics: {content_type}");
    let text = response.text().await.unwrap();
    let values = samples(&text);
    let value = |name: &str| *values.get(name).unwrap_or_else(|| panic!("metric {name} is present:\n{text}"));

    assert_eq!(value("aura_messages_received_total"), 1.0, "one message was received");
    assert_eq!(value("aura_messages_delivered_total"), 1.0, "one message frame was queued to the one subscriber");
    assert_eq!(value("aura_websocket_connections"), 1.0, "one WebSocket is open");
    assert_eq!(value("aura_subscriptions"), 1.0, "one subscription is live");
    assert_eq!(value("aura_fanout_seconds_count"), 1.0, "the fan-out of one send was timed");
    assert!(value("aura_write_batch_size_count") >= 1.0, "at least one write batch was committed");
    assert!(value("aura_flush_seconds_count") >= 1.0, "at least one flush was timed");
    assert_eq!(value("aura_write_queue"), 0.0, "the writer's queue is empty");
    assert_eq!(value("aura_slow_consumer_closes_total"), 0.0, "no connection was too slow");
    assert!(value("aura_database_bytes") > 0.0, "the database size is reported");
    assert_eq!(value("aura_writes_available"), 1.0, "writes are available");
    assert!(text.ends_with("# EOF\n"), "the exposition ends with # EOF");
    server.stop().await;
}

#[tokio::test]
async fn metrics_behind_proxy_need_token() {
    let token = "metrics-token-0123456789";
    let server = TestServer::start_with(|args| args.metrics_token = Some(token.to_string())).await;
    let proxied = || common::http().get(server.url("/metrics")).header("X-Forwarded-For", "203.0.113.7");

    let response = proxied().send().await.unwrap();
    assert_eq!(response.status(), 403, "a request forwarded by a proxy gets 403 without the token");
    let response = proxied().bearer_auth("wrong-token-0123456789").send().await.unwrap();
    assert_eq!(response.status(), 403, "a wrong token gets 403");
    let response = proxied().bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "the metrics token is accepted through a proxy");
    server.stop().await;
}

#[tokio::test]
async fn json_logs_keep_content_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &["--log-format", "json"]);
    let addr = server.listening().await;
    let api = Api::register_admin(addr, dir.path(), "ana").await;
    let general = api.general().await;
    let secret = "private words that stay out of logs";
    let (status, body) = api.post_message(&general, secret, "logged").await;
    assert_eq!(status, 201, "the message is sent: {body}");
    server.terminate();
    let status = server.exit_within(unit_stop_timeout()).await;
    assert_eq!(status.and_then(|status| status.code()), Some(0), "the server stops on SIGTERM");
    let stderr = server.final_stderr();

    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("log line {line:?} is JSON: {error}")))
        .collect();
    let start = lines
        .iter()
        .find(|line| line["fields"]["message"].as_str().is_some_and(|m| m.starts_with("listening on")))
        .expect("a start line is logged");
    assert_eq!(start["fields"]["version"], env!("CARGO_PKG_VERSION"), "the start line has the version: {start}");
    assert_eq!(
        start["fields"]["data_dir"],
        dir.path().display().to_string(),
        "the start line has the data directory: {start}"
    );
    assert_eq!(start["fields"]["addr"], addr.to_string(), "the start line has the listen address: {start}");
    assert!(start["fields"]["messages"].is_u64(), "the start line has the message count: {start}");
    assert!(
        lines.iter().any(|line| line["fields"]["message"] == "shutdown complete"),
        "the stop is logged:\n{stderr}"
    );
    assert!(!stderr.contains(secret), "message content never reaches the log:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "the log has no colour codes:\n{stderr}");
}

#[tokio::test]
async fn text_logs_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    server.listening().await;
    server.terminate();
    let status = server.exit_within(unit_stop_timeout()).await;
    assert_eq!(status.and_then(|status| status.code()), Some(0), "the server stops on SIGTERM");
    let stderr = server.final_stderr();
    assert!(stderr.contains("listening on"), "the start is logged:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "a log written to a pipe has no colour codes:\n{stderr:?}");
}
