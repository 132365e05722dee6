//! Test helpers for the `aura` binary as a separate process: spawning it,
//! signalling it, and a bearer-token HTTP and WebSocket client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A password that passes validation.
pub const PASSWORD: &str = "correct horse battery";

/// How often a wait loop checks for its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long a client waits for one frame or response.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket connection to a spawned server.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Path of the `aura` binary that cargo built for the tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aura"))
}

/// Runs `aura ARGS` to completion and returns its output.
pub fn run_aura(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the aura binary runs")
}

/// A spawned `aura serve`, killed with SIGKILL when dropped so that a failing
/// test leaves no process behind.
pub struct ServerProcess {
    child: Child,
    /// Everything the process wrote to stderr so far.
    stderr: Arc<Mutex<String>>,
    /// The thread that copies stderr into `stderr` until EOF.
    reader: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `aura serve` on `data_dir`, listening on a free loopback port,
    /// with the send rate limit raised and `extra` flags appended.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            // The clients in these tests send far above the per-user limit.
            .args(["--send-burst", "1000000", "--send-per-second", "100000"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the aura binary starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = std::thread::spawn({
            let stderr = stderr.clone();
            move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = stderr.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        ServerProcess {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `listening on ADDR` log line and returns the address.
    pub async fn listening(&mut self) -> SocketAddr {
        for _ in 0..(30_000 / POLL_INTERVAL.as_millis()) {
            if let Some(addr) = parse_listening(&self.stderr.lock().unwrap()) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("aura exited with {status} before listening; stderr:\n{}", self.stderr_text());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("aura did not log 'listening on' within 30 s; stderr:\n{}", self.stderr_text());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        for _ in 0..(limit.as_millis() / POLL_INTERVAL.as_millis()).max(1) {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                return Some(status);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.child.try_wait().expect("try_wait works")
    }

    /// Stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stderr after the process exited, once the copy thread read all of it.
    pub fn final_stderr(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.stderr_text()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -TERM {} succeeds", self.pid());
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Parses the address from a `listening on 127.0.0.1:PORT` log line, in
/// the text or the JSON log format.
fn parse_listening(stderr: &str) -> Option<SocketAddr> {
    let rest = stderr.split("listening on ").nth(1)?;
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    address.parse().ok()
}

/// A plain HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().unwrap()
}

/// A bearer-authenticated HTTP and WebSocket client for a spawned server.
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    /// Registers `name` as admin with the setup code in `data_dir` and logs in.
    pub async fn register_admin(addr: SocketAddr, data_dir: &Path, name: &str) -> Api {
        let code = std::fs::read_to_string(data_dir.join("setup-code")).expect("the setup-code file exists");
        let response = http()
            .post(format!("http://{addr}/api/register"))
            .json(&json!({"username": name, "password": PASSWORD, "setup_code": code.trim()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "admin registration succeeds");
        Api::login(addr, name).await
    }

    pub async fn login(addr: SocketAddr, name: &str) -> Api {
        let base = format!("http://{addr}");
        let response = http()
            .post(format!("{base}/api/session"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login succeeds");
        let body: Value = response.json().await.unwrap();
        Api {
            base,
            token: body["token"].as_str().unwrap().to_string(),
            http: http(),
        }
    }

    /// Returns the same session on a restarted server at `addr`.
    pub fn at(&self, addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            token: self.token.clone(),
            http: http(),
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_message(&self, channel: &str, content: &str, nonce: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/channels/{channel}/messages", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"content": content, "nonce": nonce}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The id of the default channel "general".
    pub async fn general(&self) -> String {
        let (status, layout) = self.get_json("/api/layout").await;
        assert_eq!(status, 200, "the layout loads: {layout}");
        layout["categories"][0]["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|channel| channel["name"] == "general")
            .expect("the default layout has general")["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Reads every change in a channel with a rev above `after`, page by page.
    pub async fn changes_after(&self, channel: &str, after: &str) -> Vec<Value> {
        let mut changes = Vec::new();
        let mut after = after.to_string();
        for _ in 0..10_000 {
            let (status, body) = self
                .get_json(&format!("/api/channels/{channel}/messages?after={after}&limit=200"))
                .await;
            assert_eq!(status, 200, "polling after={after} succeeds: {body}");
            let page = body["messages"].as_array().unwrap().clone();
            if let Some(last) = page.last() {
                after = last["rev"].as_str().unwrap().to_string();
            }
            changes.extend(page);
            if body["has_more"] != true {
                return changes;
            }
        }
        panic!("polling did not reach the end within 10,000 pages");
    }

    /// Opens a WebSocket with the bearer token and reads `ready`.
    pub async fn connect(&self) -> Socket {
        let url = format!("{}/ws", self.base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {}", self.token).parse().unwrap());
        let (mut stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        let ready = next_json(&mut stream).await.expect("ready arrives");
        assert_eq!(ready["op"], "ready", "the first frame is ready: {ready}");
        stream
    }
}

/// Reads the next text frame as JSON, or `None` once the connection ends
/// or no frame arrives within [`TIMEOUT`].
pub async fn next_json<S>(stream: &mut S) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(TIMEOUT, stream.next()).await.ok()?? {
            Ok(WsMessage::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The `TimeoutStopSec=` of systemd/aura.service.
pub fn unit_stop_timeout() -> Duration {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/aura.service"))
        .expect("systemd/aura.service exists");
    let value = unit
        .lines()
        .find_map(|line| line.trim().strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let seconds = value.trim().trim_end_matches('s');
    Duration::from_secs(seconds.parse().expect("TimeoutStopSec is a whole number of seconds"))
}
