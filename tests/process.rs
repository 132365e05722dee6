//! The `aura` binary as a separate process: the data-directory lock, a
//! busy port, durability of acknowledged messages across kill -9, and
//! graceful shutdown on SIGTERM.

mod common;
mod spawn;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use spawn::{next_json, run_aura, Api, ServerProcess};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Maximum unacknowledged sends per client in the kill test. It stays below
/// the default --send-queue of 1024 frames, because one group commit can
/// complete every pending send of a connection at once, and the server
/// closes a connection whose acks overflow that queue with 4008.
const IN_FLIGHT: usize = 256;

/// How often a wait loop checks for its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Builds the content of the message sent with `nonce` in the kill test.
fn kill_content(nonce: &str) -> String {
    format!("durable {nonce}")
}

#[tokio::test]
async fn second_instance_exits_with_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::spawn(dir.path(), &[]);
    let addr = first.listening().await;

    let mut second = ServerProcess::spawn(dir.path(), &[]);
    let status = second
        .exit_within(Duration::from_secs(10))
        .await
        .expect("the second instance exits within 10 s");
    assert!(!status.success(), "the second instance exits with a non-zero status, found {status}");

    let stderr = second.final_stderr();
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "the second instance writes one line to stderr:\n{stderr}");
    let directory = dir.path().display().to_string();
    assert!(lines[0].contains(&directory), "the error names the data directory {directory}: {stderr}");
    assert!(!stderr.contains("panicked"), "the second instance does not panic: {stderr}");

    let response = http().get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the first instance still serves /healthz");
}

#[test]
fn busy_port_leaves_no_data_directory() {
    let occupant = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupant.local_addr().unwrap().to_string();
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");

    let output = run_aura(&["serve", "--listen", &address, "--data-dir", data_dir.to_str().unwrap()]);
    assert!(!output.status.success(), "serve on a busy port exits with a non-zero status");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen"), "the error names the flag: {stderr}");
    assert!(!data_dir.exists(), "no data directory is created when the port is busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let addr = server.listening().await;
    let api = Api::register_admin(addr, dir.path(), "ana").await;
    let general = api.general().await;

    // nonce -> acknowledged message id, and every nonce put on the wire.
    let acks: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..3 {
        let (mut sink, mut stream) = api.connect().await.split();
        // Each client keeps up to IN_FLIGHT sends unacknowledged. The reader
        // task returns a permit per ack and closes the semaphore when the
        // connection ends, which stops the sender.
        let window = Arc::new(Semaphore::new(IN_FLIGHT));
        let acks = acks.clone();
        tasks.push(tokio::spawn({
            let window = window.clone();
            async move {
                while let Some(frame) = next_json(&mut stream).await {
                    if frame["op"] == "ack" {
                        let nonce = frame["nonce"].as_str().unwrap().to_string();
                        acks.lock().unwrap().insert(nonce, frame["id"].as_str().unwrap().to_string());
                        window.add_permits(1);
                    }
                }
                window.close();
            }
        }));
        let sent = sent.clone();
        let stop = stop.clone();
        let channel = general.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(permit) = window.acquire().await else { break };
                permit.forget();
                let nonce = format!("c{client}-{i}");
                sent.lock().unwrap().insert(nonce.clone());
                let frame = json!({"op": "send", "channel": channel, "content": kill_content(&nonce), "nonce": nonce});
                if sink.send(WsMessage::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
        }));
    }

    // Kill while the clients are still sending, once some acks arrived.
    for _ in 0..(20_000 / POLL_INTERVAL.as_millis()) {
        if acks.lock().unwrap().len() >= 500 {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(TIMEOUT, task).await.is_err() {
            abort.abort();
        }
    }
    let acks = acks.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(!acks.is_empty(), "some sends were acknowledged before the kill");

    let mut restarted = ServerProcess::spawn(dir.path(), &[]);
    let addr = restarted.listening().await;
    let api = api.at(addr);
    let changes = api.changes_after(&general, "0").await;

    let mut stored: HashMap<String, Vec<&Value>> = HashMap::new();
    for message in &changes {
        let nonce = message["nonce"].as_str().unwrap_or_default().to_string();
        stored.entry(nonce).or_default().push(message);
    }

    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (nonce, id) in &acks {
        match stored.get(nonce).map(Vec::as_slice) {
            Some([message]) => {
                if message["id"] != id.as_str() || message["content"] != kill_content(nonce) {
                    wrong.push(format!("{nonce}: acked id {id}, stored {message}"));
                }
            }
            Some(_) => {}
            None => missing.push(nonce.clone()),
        }
    }
    let duplicated: Vec<&String> = stored.iter().filter(|(_, found)| found.len() > 1).map(|(nonce, _)| nonce).collect();
    let unknown: Vec<&String> = stored.keys().filter(|nonce| !sent.contains(*nonce)).collect();
    println!(
        "sent {}, acknowledged {}, stored after restart {}",
        sent.len(),
        acks.len(),
        changes.len()
    );

    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are missing after kill -9, for example {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "messages stored more than once after kill -9: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
    assert!(
        wrong.is_empty(),
        "acknowledged messages stored with another id or content: {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(unknown.is_empty(), "stored messages with nonces that were never sent: {unknown:?}");
    let revs: Vec<u64> = changes.iter().map(|m| m["rev"].as_str().unwrap().parse().unwrap()).collect();
    assert!(revs.windows(2).all(|pair| pair[0] < pair[1]), "polling returns changes in increasing rev order");

    let newest = ids(&Value::Array(changes.clone())).into_iter().max().unwrap_or(0);
    let (status, body) = api.post_message(&general, "after the crash", "after-restart").await;
    assert_eq!(status, 201, "sending works after the restart: {body}");
    let id: u64 = body["message"]["id"].as_str().unwrap().parse().unwrap();
    assert!(id > newest, "an id issued after the restart ({id}) is greater than every stored id ({newest})");
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let addr = server.listening().await;
    let api = Api::register_admin(addr, dir.path(), "ana").await;
    let general = api.general().await;

    let mut contents = Vec::new();
    for i in 0..20 {
        let content = format!("before shutdown {i}");
        let (status, body) = api.post_message(&general, &content, &format!("term-{i}")).await;
        assert_eq!(status, 201, "message {i} is sent: {body}");
        contents.push(content);
    }
    let mut ws = api.connect().await;

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.pid().to_string())
        .status()
        .expect("the kill command runs");
    assert!(killed.success(), "kill -TERM succeeds");

    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => break frame.map(|frame| u16::from(frame.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) | Err(_) => break None,
        }
    };
    assert_eq!(close, Some(1001), "open WebSockets are closed with 1001 on SIGTERM");

    let status = server
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the server exits within 30 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "the server exits with status 0 after SIGTERM");
    let stderr = server.final_stderr();
    assert!(stderr.contains("shutdown complete"), "the server logs 'shutdown complete':\n{stderr}");

    let mut restarted = ServerProcess::spawn(dir.path(), &[]);
    let addr = restarted.listening().await;
    let stored: Vec<String> = api
        .at(addr)
        .changes_after(&general, "0")
        .await
        .iter()
        .map(|message| message["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, contents, "every message sent before SIGTERM is present after a restart");
}
