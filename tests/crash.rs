//! Crash safety of the `aura` binary: SIGKILL at random moments under load,
//! SIGTERM under load, and a full disk.

mod spawn;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use spawn::*;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Sending clients in the load tests.
const CLIENTS: usize = 3;

/// Maximum unacknowledged sends per client. It stays below the default
/// --send-queue of 1024 frames, because one group commit can complete every
/// pending send of a connection at once.
const IN_FLIGHT: usize = 128;

/// Kill-and-restart rounds in the SIGKILL test.
const KILL_ROUNDS: usize = 20;

/// Size of the tmpfs in the disk-full tests.
const TMPFS_SIZE: &str = "16m";

/// Clients that send as fast as their in-flight window allows, and record
/// which sends were put on the wire and which were acknowledged.
struct Load {
    /// nonce -> acknowledged message id.
    acks: Arc<Mutex<HashMap<String, String>>>,
    /// Every nonce put on the wire.
    sent: Arc<Mutex<HashSet<String>>>,
    /// Close codes the server sent, one per client that got a close frame.
    close_codes: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Connects [`CLIENTS`] clients to `channel` and starts sending. Nonces
    /// are `{prefix}-c{client}-{i}`, with `i` counting up from 0.
    async fn start(api: &Api, channel: &str, prefix: &str) -> Load {
        let load = Load {
            acks: Arc::default(),
            sent: Arc::default(),
            close_codes: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let (mut sink, mut stream) = api.connect().await.split();
            // The reader returns a permit per ack and closes the semaphore
            // when the connection ends, which stops the sender.
            let window = Arc::new(Semaphore::new(IN_FLIGHT));
            tasks.push(tokio::spawn({
                let window = window.clone();
                let acks = load.acks.clone();
                let close_codes = load.close_codes.clone();
                async move {
                    loop {
                        let next = tokio::time::timeout(TIMEOUT, stream.next()).await;
                        let Ok(Some(Ok(message))) = next else { break };
                        match message {
                            WsMessage::Text(text) => {
                                let frame: Value = serde_json::from_str(&text).unwrap();
                                if frame["op"] == "ack" {
                                    let nonce = frame["nonce"].as_str().unwrap().to_string();
                                    acks.lock().unwrap().insert(nonce, frame["id"].as_str().unwrap().to_string());
                                    window.add_permits(1);
                                }
                            }
                            WsMessage::Close(frame) => {
                                if let Some(frame) = frame {
                                    close_codes.lock().unwrap().push(u16::from(frame.code));
                                }
                                break;
                            }
                            _ => {}
                        }
                    }
                    window.close();
                }
            }));
            let sent = load.sent.clone();
            let stop = load.stop.clone();
            let channel = channel.to_string();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                for i in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(permit) = window.acquire().await else { break };
                    permit.forget();
                    let nonce = format!("{prefix}-c{client}-{i}");
                    sent.lock().unwrap().insert(nonce.clone());
                    let frame = json!({"op": "send", "channel": channel, "content": content_of(&nonce), "nonce": nonce});
                    if sink.send(WsMessage::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    /// Stops sending and waits for every client task to end, which happens
    /// once its connection ends.
    async fn finish(self) -> (HashMap<String, String>, HashSet<String>, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
        let acks = self.acks.lock().unwrap().clone();
        let sent = self.sent.lock().unwrap().clone();
        let close_codes = self.close_codes.lock().unwrap().clone();
        (acks, sent, close_codes)
    }

    fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }
}

/// The content of the message sent with `nonce`.
fn content_of(nonce: &str) -> String {
    format!("durable {nonce}")
}

/// The (client prefix, sequence number) of a load nonce such as `r3-c1-42`.
fn split_nonce(nonce: &str) -> Option<(&str, u64)> {
    let (prefix, number) = nonce.rsplit_once('-')?;
    Some((prefix, number.parse().ok()?))
}

/// Checks stored messages against the acknowledged sends. Each acked nonce
/// is stored exactly once with its acked id and content, and nothing is
/// stored that was never sent. Ids increase in the order polling returns
/// them, and each client's messages are stored in the order it sent them.
fn check_stored(stored: &[Value], acks: &HashMap<String, String>, sent: &HashSet<String>, context: &str) {
    let mut by_nonce: HashMap<&str, Vec<&Value>> = HashMap::new();
    for message in stored {
        let nonce = message["nonce"].as_str().unwrap_or_default();
        by_nonce.entry(nonce).or_default().push(message);
    }

    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (nonce, id) in acks {
        match by_nonce.get(nonce.as_str()).map(Vec::as_slice) {
            Some([message]) => {
                if message["id"] != id.as_str() || message["content"] != content_of(nonce) {
                    wrong.push(format!("{nonce}: acked id {id}, stored {message}"));
                }
            }
            Some(_) => {}
            None => missing.push(nonce.clone()),
        }
    }
    let duplicated: Vec<&&str> = by_nonce.iter().filter(|(_, found)| found.len() > 1).map(|(nonce, _)| nonce).collect();
    let unknown: Vec<&&str> = by_nonce.keys().filter(|nonce| !sent.contains(**nonce)).collect();
    assert!(
        missing.is_empty(),
        "{context}: {} of {} acknowledged messages are missing, for example {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        duplicated.is_empty(),
        "{context}: messages stored more than once: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
    assert!(wrong.is_empty(), "{context}: acked messages stored with another id or content: {:?}", &wrong[..wrong.len().min(10)]);
    assert!(unknown.is_empty(), "{context}: stored messages with nonces never sent: {:?}", &unknown[..unknown.len().min(10)]);

    let ids: Vec<u64> = stored.iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{context}: polling returns ids in increasing order");

    let mut last_of_client: HashMap<&str, u64> = HashMap::new();
    for message in stored {
        let Some((client, number)) = message["nonce"].as_str().and_then(split_nonce) else { continue };
        if let Some(previous) = last_of_client.insert(client, number) {
            assert!(
                previous < number,
                "{context}: client {client} sent {previous} before {number}, but they are stored the other way round"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twenty_times_keeps_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let addr = server.listening().await;
    let mut api = Api::register_admin(addr, dir.path(), "ana").await;
    let general = api.general().await;

    let mut all_acks: HashMap<String, String> = HashMap::new();
    let mut all_sent: HashSet<String> = HashSet::new();
    let mut checked_rev = "0".to_string();
    let mut stored_total = 0;
    for round in 0..KILL_ROUNDS {
        let load = Load::start(&api, &general, &format!("r{round}")).await;
        // A random moment: sometimes before the first ack, mostly while
        // group commits are in flight.
        let delay = rand::thread_rng().gen_range(0..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        let (acks, sent, _) = load.finish().await;
        println!("round {round}: killed after {delay} ms with {} sent, {} acknowledged", sent.len(), acks.len());
        all_acks.extend(acks);
        all_sent.extend(sent);

        server = ServerProcess::spawn(dir.path(), &[]);
        let addr = server.listening().await;
        api = api.at(addr);
        // Each round checks what was stored since the last check; the
        // final check below reads everything again.
        let stored = api.changes_after(&general, &checked_rev).await;
        let round_acks: HashMap<String, String> = all_acks
            .iter()
            .filter(|(nonce, _)| nonce.starts_with(&format!("r{round}-")))
            .map(|(nonce, id)| (nonce.clone(), id.clone()))
            .collect();
        check_stored(&stored, &round_acks, &all_sent, &format!("after kill {round}"));
        if let Some(last) = stored.last() {
            checked_rev = last["rev"].as_str().unwrap().to_string();
        }
        stored_total += stored.len();
    }

    let everything = api.changes_after(&general, "0").await;
    println!(
        "{KILL_ROUNDS} kills: {} sent, {} acknowledged, {} stored",
        all_sent.len(),
        all_acks.len(),
        everything.len()
    );
    assert!(!all_acks.is_empty(), "some sends were acknowledged over {KILL_ROUNDS} rounds");
    assert_eq!(everything.len(), stored_total, "messages stored in earlier rounds are all still there");
    check_stored(&everything, &all_acks, &all_sent, "after the last restart");

    server.terminate();
    let status = server.exit_within(unit_stop_timeout()).await;
    assert_eq!(status.and_then(|status| status.code()), Some(0), "the server stops cleanly after the test");
    let verify = run_aura(&["verify", dir.path().to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "aura verify passes on the data directory:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_acked() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path(), &[]);
    let addr = server.listening().await;
    let api = Api::register_admin(addr, dir.path(), "ana").await;
    let general = api.general().await;

    let load = Load::start(&api, &general, "t").await;
    for _ in 0..(20_000 / POLL_INTERVAL.as_millis()) {
        if load.acked() >= 300 {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    server.terminate();
    let limit = unit_stop_timeout();
    let status = server.exit_within(limit).await;
    let (acks, sent, close_codes) = load.finish().await;
    println!("sigterm: {} sent, {} acknowledged", sent.len(), acks.len());

    assert!(!acks.is_empty(), "some sends were acknowledged before SIGTERM");
    let stderr = server.final_stderr();
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "the server exits with status 0 within TimeoutStopSec ({limit:?}) of SIGTERM; stderr:\n{stderr}"
    );
    assert!(
        close_codes.iter().all(|code| *code == 1001),
        "every close frame the clients got has code 1001: {close_codes:?}"
    );
    assert!(!stderr.contains("panicked"), "the server does not panic while stopping:\n{stderr}");

    let mut restarted = ServerProcess::spawn(dir.path(), &[]);
    let addr = restarted.listening().await;
    let stored = api.at(addr).changes_after(&general, "0").await;
    check_stored(&stored, &acks, &sent, "after SIGTERM");
}

/// A tmpfs mounted on a directory for the length of a test.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `path`, or returns why it cannot.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|error| format!("mount did not run: {error}"))?;
        if !output.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the filesystem is full, at most 1 GiB.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("the filler file is created");
    let chunk = vec![0x5a_u8; 64 * 1024];
    for _ in 0..16_384 {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

/// Runs the steps both disk-full tests share. With the disk full, sends get
/// `unavailable` over HTTP and WebSocket while reads keep working. Once the
/// filler is deleted, sends work again.
async fn check_disk_full_recovery(min_free_mb: &str) {
    let root = tempfile::tempdir().unwrap();
    let mount = match Tmpfs::mount(root.path(), TMPFS_SIZE) {
        Ok(mount) => mount,
        Err(reason) => {
            println!("skipped: a size-limited tmpfs is needed to fill a disk, and {reason}");
            return;
        }
    };
    let data_dir = mount.path.join("data");
    let filler = mount.path.join("filler");
    let mut server = ServerProcess::spawn(&data_dir, &["--min-free-mb", min_free_mb]);
    let addr = server.listening().await;
    let api = Api::register_admin(addr, &data_dir, "ana").await;
    let general = api.general().await;
    let (status, body) = api.post_message(&general, "before the disk filled", "before").await;
    assert_eq!(status, 201, "a send works while the disk has room: {body}");
    let mut socket = api.connect().await;

    fill_disk(&filler);
    // Without a reserve, sled may still have room in blocks it already
    // holds, so a few sends can succeed before one fails.
    let mut refused = None;
    for i in 0..500 {
        let (status, body) = api.post_message(&general, "while the disk is full", &format!("full-{i}")).await;
        if status != 201 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("a send fails within 500 attempts once the disk is full");
    assert_eq!(status, 503, "a send on a full disk gets 503: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "a send on a full disk gets unavailable: {body}");

    let frame = json!({"op": "send", "channel": general, "content": "over the socket", "nonce": "ws-full"});
    socket.send(WsMessage::text(frame.to_string())).await.unwrap();
    let mut error = None;
    for _ in 0..100 {
        let Some(frame) = next_json(&mut socket).await else { break };
        if frame["nonce"] == "ws-full" {
            error = Some(frame);
            break;
        }
    }
    let error = error.expect("the WebSocket send gets an answer");
    assert_eq!(error["op"], "error", "a WebSocket send on a full disk gets an error: {error}");
    assert_eq!(error["code"], "unavailable", "the WebSocket error is unavailable: {error}");

    let (status, page) = api.get_json(&format!("/api/channels/{general}/messages")).await;
    assert_eq!(status, 200, "reading a channel works while the disk is full: {page}");
    let contents: Vec<&str> = page["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents.contains(&"before the disk filled"), "earlier messages stay readable: {contents:?}");
    let response = http().get(format!("{}/healthz", api.base)).send().await.unwrap();
    assert_eq!(response.status(), 200, "/healthz answers while the disk is full");

    std::fs::remove_file(&filler).expect("the filler file is deleted");
    // The writer probes with growing delays of at most 10 s.
    let mut recovered = None;
    for attempt in 0..120 {
        let (status, body) = api.post_message(&general, "after space was freed", &format!("after-{attempt}")).await;
        if status == 201 {
            recovered = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered.is_some(), "a send works again within 30 s of freeing space");

    let stored = api.changes_after(&general, "0").await;
    let contents: Vec<&str> = stored.iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents.contains(&"before the disk filled"), "the message from before is still stored: {contents:?}");
    assert!(contents.contains(&"after space was freed"), "the message from after is stored: {contents:?}");

    server.terminate();
    let status = server.exit_within(unit_stop_timeout()).await;
    let stderr = server.final_stderr();
    let recovery_lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("failed") || line.contains("reopen") || line.contains("succeed again"))
        .collect();
    println!("server log about the failure and the recovery:\n{}", recovery_lines.join("\n"));
    assert_eq!(status.and_then(|status| status.code()), Some(0), "the server stops cleanly afterwards:\n{stderr}");
    assert!(!stderr.contains("panicked"), "nothing panics:\n{stderr}");
    let verify = run_aura(&["verify", data_dir.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "aura verify passes afterwards:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_with_reserve_recovers() {
    check_disk_full_recovery("2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_without_reserve_recovers() {
    check_disk_full_recovery("0").await;
}
