//! Test harness: the real server in-process on 127.0.0.1 port 0 with a
//! real sled database in a temporary directory, and real HTTP and
//! WebSocket clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aura::config::ServeArgs;
use aura::server::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame or response.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A password that passes validation.
pub const PASSWORD: &str = "correct horse battery";

/// A server running in this test process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Keeps the temporary data directory alive until the test ends.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server on a new, empty data directory.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on a new data directory with adjusted flags.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeArgs)) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(dir, adjust).await
    }

    /// Starts a server on an existing data directory.
    pub async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut ServeArgs)) -> TestServer {
        let mut args = test_args(&dir);
        adjust(&mut args);
        let config = args.validate().expect("test flags are valid");
        let server = Server::open(config).await.expect("server opens its data directory");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        Self::run(server, listener, dir)
    }

    /// Runs `server` on `listener` in a task until [`TestServer::stop`].
    fn run(server: Server, listener: tokio::net::TcpListener, dir: tempfile::TempDir) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the server down gracefully and returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        dir
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task did not panic");
            result.expect("server shut down cleanly");
        }
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self) -> TestServer {
        let dir = self.stop().await;
        TestServer::start_in(dir, |_| {}).await
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one-time setup code the server wrote while no admin exists.
    pub fn setup_code(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("setup-code"))
            .expect("setup-code file exists while no admin exists")
            .trim()
            .to_string()
    }
}

/// An HTTP client logged in as one user.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub user: Value,
}

/// A plain HTTP client without cookies.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT * 4).build().unwrap()
}

/// Registers a user (admin when `setup_code` is given) and returns the response.
pub async fn register_raw(server: &TestServer, name: &str, password: &str, setup_code: Option<&str>) -> reqwest::Response {
    let mut body = json!({"username": name, "password": password});
    if let Some(code) = setup_code {
        body["setup_code"] = json!(code);
    }
    http().post(server.url("/api/register")).json(&body).send().await.unwrap()
}

/// Logs in and returns the response.
pub async fn login_raw(server: &TestServer, name: &str, password: &str) -> reqwest::Response {
    http()
        .post(server.url("/api/session"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
}

impl Client {
    /// Registers `name` as a member and logs in.
    pub async fn member(server: &TestServer, name: &str) -> Client {
        let response = register_raw(server, name, PASSWORD, None).await;
        assert_eq!(response.status(), 201, "register {name}: {}", response.text().await.unwrap());
        Self::login(server, name).await
    }

    /// Registers `name` with the setup code, which makes it admin, and logs in.
    pub async fn admin(server: &TestServer, name: &str) -> Client {
        let code = server.setup_code();
        let response = register_raw(server, name, PASSWORD, Some(&code)).await;
        assert_eq!(response.status(), 201, "register admin {name}: {}", response.text().await.unwrap());
        Self::login(server, name).await
    }

    /// Logs in as an existing user.
    pub async fn login(server: &TestServer, name: &str) -> Client {
        let response = login_raw(server, name, PASSWORD).await;
        assert_eq!(response.status(), 200, "login {name}");
        let body: Value = response.json().await.unwrap();
        Client {
            http: http(),
            base: server.url(""),
            token: body["token"].as_str().unwrap().to_string(),
            user: body["user"].clone(),
        }
    }

    pub fn id(&self) -> String {
        self.user["id"].as_str().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.patch(format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    /// GET that returns the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The id of the channel named `name` in the layout.
    pub async fn channel_id(&self, name: &str) -> String {
        let (_, layout) = self.get_json("/api/layout").await;
        channel_in_layout(&layout, name)
    }

    /// Sends a message over HTTP and returns the status and body.
    pub async fn post_message(&self, channel: &str, content: &str, nonce: &str) -> (u16, Value) {
        let response = self
            .post(&format!("/api/channels/{channel}/messages"))
            .json(&json!({"content": content, "nonce": nonce}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Opens a WebSocket authenticated with this client's bearer token.
    pub async fn connect(&self, server: &TestServer) -> WsClient {
        WsClient::connect(server, &self.token).await
    }
}

/// Finds a channel id by name in a layout JSON object.
pub fn channel_in_layout(layout: &Value, name: &str) -> String {
    layout["categories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|category| category["channels"].as_array().unwrap().iter())
        .find(|channel| channel["name"] == name)
        .unwrap_or_else(|| panic!("channel {name} in layout {layout}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A WebSocket client.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `ready` frame received on connect.
    pub ready: Value,
}

/// How a WebSocket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Close(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects with a bearer token and waits for `ready`.
    pub async fn connect(server: &TestServer, token: &str) -> WsClient {
        let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        let mut client = WsClient {
            stream,
            ready: Value::Null,
        };
        client.ready = client.recv().await;
        assert_eq!(client.ready["op"], "ready", "first frame is ready: {}", client.ready);
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(WsMessage::text(frame.to_string())).await.expect("send frame");
    }

    /// The next text frame as JSON other than a `presence` frame, which
    /// arrive whenever users come and go; panics after [`TIMEOUT`] or on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = self.recv_any().await;
            if frame["op"] != "presence" {
                return frame;
            }
        }
    }

    /// The next text frame as JSON, `presence` frames included.
    pub async fn recv_any(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("a frame arrives in time")
                .expect("stream is open")
                .expect("frame reads");
            match next {
                WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
                WsMessage::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame whose op is `op`, skipping others.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let frame = self.recv_any().await;
            if frame["op"] == op {
                return frame;
            }
        }
    }

    /// Reads until the connection ends and reports how.
    pub async fn closed(&mut self) -> Ended {
        loop {
            let next = tokio::time::timeout(TIMEOUT * 3, self.stream.next())
                .await
                .expect("connection ends in time");
            match next {
                Some(Ok(WsMessage::Close(Some(CloseFrame { code, .. })))) => return Ended::Close(code.into()),
                Some(Ok(WsMessage::Close(None))) => return Ended::Close(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, channel: &str, after: Option<&str>, limit: usize) -> Value {
        self.send(json!({"op": "subscribe", "channel": channel, "after": after, "limit": limit}))
            .await;
        self.recv_op("subscribed").await
    }

    /// Sends a message and waits for its ack; returns the ack.
    pub async fn send_message(&mut self, channel: &str, content: &str, nonce: &str) -> Value {
        self.send(json!({"op": "send", "channel": channel, "content": content, "nonce": nonce}))
            .await;
        loop {
            let frame = self.recv().await;
            if frame["op"] == "ack" && frame["nonce"] == nonce {
                return frame;
            }
            if frame["op"] == "error" && frame["nonce"] == nonce {
                panic!("send {nonce} failed: {frame}");
            }
        }
    }
}

/// Ids in a list of message objects, as u64.
pub fn ids(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Path of the release or debug `aura` binary that cargo built for the tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aura"))
}
pub mod raw;

impl TestServer {
    /// Starts a server on an existing data directory, listening on `addr`,
    /// such as the address of a server that was just stopped, so clients
    /// reconnect to the same URL. Retries the bind for a few seconds while
    /// the old listener is still closing.
    pub async fn start_on(dir: tempfile::TempDir, addr: SocketAddr) -> TestServer {
        let config = test_args(&dir).validate().expect("test flags are valid");
        let server = Server::open(config).await.expect("server opens its data directory");
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    eprintln!("binding {addr} again failed ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("binding {addr} again failed: {error}"),
            }
        };
        Self::run(server, listener, dir)
    }
}

/// Returns the flags of a test server on `dir`: the defaults, with the send rate
/// limit raised because most tests send faster than people do. The
/// rate-limit tests lower it again.
fn test_args(dir: &tempfile::TempDir) -> ServeArgs {
    let mut args = ServeArgs::for_tests(dir.path());
    args.send_burst = 1_000_000;
    args.send_per_second = 100_000.0;
    args
}
