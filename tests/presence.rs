//! Presence, typing indicators and connection liveness, against the real
//! server with real WebSocket clients.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aura::config::ServeArgs;
use aura::server::{App, Server};
use common::raw::{RawClient, RawEnd};
use common::{Client, TestServer, WsClient, PASSWORD, TIMEOUT};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How often a watching client sends a heartbeat while it waits, well
/// under the shortest heartbeat timeout these tests configure.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);

/// Close code for a connection over the per-user cap, as documented.
const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4029;

/// The online users one client believes in, built from its `ready` frame
/// and every `presence` frame after it.
#[derive(Debug, Default, Clone)]
struct PresenceView {
    online: HashSet<String>,
}

impl PresenceView {
    fn from_ready(ready: &Value) -> PresenceView {
        let online = ready["presence"]["online"]
            .as_array()
            .unwrap_or_else(|| panic!("ready carries presence.online: {ready}"))
            .iter()
            .map(|id| id.as_str().expect("user ids are strings").to_string())
            .collect();
        PresenceView { online }
    }

    /// Applies a delta, or replaces the list for a snapshot (`full`).
    fn apply(&mut self, frame: &Value) {
        if frame["full"] == true {
            self.online.clear();
        }
        for id in ids_in(frame, "online") {
            self.online.insert(id);
        }
        for id in ids_in(frame, "offline") {
            self.online.remove(&id);
        }
    }

    fn has(&self, user: &str) -> bool {
        self.online.contains(user)
    }
}

/// Returns the user ids listed under `key` ("online" or "offline") of a
/// presence frame.
fn ids_in(frame: &Value, key: &str) -> Vec<String> {
    frame[key]
        .as_array()
        .unwrap_or_else(|| panic!("presence frame has a {key} list: {frame}"))
        .iter()
        .map(|id| id.as_str().expect("user ids are strings").to_string())
        .collect()
}

/// A WebSocket client that records presence frames and keeps its
/// connection alive with heartbeats while it waits.
struct Watcher {
    ws: WsClient,
    view: PresenceView,
    /// Every presence frame received, with its arrival time.
    frames: Vec<(Instant, Value)>,
}

impl Watcher {
    fn new(ws: WsClient) -> Watcher {
        let view = PresenceView::from_ready(&ws.ready);
        Watcher {
            ws,
            view,
            frames: Vec::new(),
        }
    }

    async fn connect(server: &TestServer, client: &Client) -> Watcher {
        Watcher::new(client.connect(server).await)
    }

    /// Reads frames until `done` holds for the view or `limit` passes, and
    /// returns whether `done` held.
    async fn until(&mut self, limit: Duration, done: impl Fn(&PresenceView) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut last_heartbeat = Instant::now();
        loop {
            if done(&self.view) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now - last_heartbeat >= HEARTBEAT_EVERY {
                self.ws.send(json!({"op": "heartbeat"})).await;
                last_heartbeat = now;
            }
            let wait = HEARTBEAT_EVERY.min(deadline - now);
            match tokio::time::timeout(wait, self.ws.stream.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("server frames are JSON");
                    if frame["op"] == "presence" {
                        self.view.apply(&frame);
                        self.frames.push((Instant::now(), frame));
                    }
                }
                Ok(Some(Ok(WsMessage::Close(frame)))) => panic!("watcher connection closed: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("watcher connection ended: {other:?}"),
            }
        }
    }

    /// Reads frames for `window` and returns the presence frames that arrived.
    async fn during(&mut self, window: Duration) -> Vec<Value> {
        let first = self.frames.len();
        self.until(window, |_| false).await;
        self.frames[first..].iter().map(|(_, frame)| frame.clone()).collect()
    }
}

/// Opens a WebSocket with a bearer token. Returns the client once `ready`
/// arrives, or the close code when the server closes it first.
async fn open_ws(addr: SocketAddr, token: &str) -> Result<WsClient, u16> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("websocket handshake in time")
        .expect("websocket connects");
    loop {
        let next = tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .expect("first frame arrives in time")
            .expect("stream is open")
            .expect("frame reads");
        match next {
            WsMessage::Text(text) => {
                let ready: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(ready["op"], "ready", "first frame is ready: {ready}");
                return Ok(WsClient { stream, ready });
            }
            WsMessage::Close(Some(CloseFrame { code, .. })) => return Err(code.into()),
            WsMessage::Close(None) => return Err(1005),
            _ => continue,
        }
    }
}

/// Closes a WebSocket with a close frame and waits for the server's close frame.
async fn close_ws(mut ws: WsClient) {
    ws.stream.close(None).await.expect("close frame is sent");
    ws.closed().await;
}

#[tokio::test]
async fn cut_off_client_goes_offline() {
    let server = TestServer::start_with(|args| {
        args.heartbeat_ms = 500;
        args.presence_grace_ms = 500;
    })
    .await;
    let wendy = Client::member(&server, "wendy").await;
    let ana = Client::member(&server, "ana").await;
    let mut watcher = Watcher::connect(&server, &wendy).await;

    // After the upgrade the raw client sends nothing: no heartbeat, no
    // close frame, no FIN. Its socket stays open until the end of the test.
    let (mut cut_off, _) = RawClient::connect(&server, &ana.token).await;
    let silent_since = Instant::now();
    let online = watcher.until(TIMEOUT, |view| view.has(&ana.id())).await;
    assert!(online, "ana is reported online once connected");

    let offline = watcher.until(TIMEOUT * 2, |view| !view.has(&ana.id())).await;
    assert!(offline, "ana, silent without a close frame or FIN, is reported offline");
    println!(
        "client silent since its upgrade reported offline after {:?} (heartbeat timeout 1.25 s, grace 0.5 s)",
        silent_since.elapsed()
    );

    let (_, end) = cut_off.read_to_end().await;
    assert_eq!(end, RawEnd::Close(4009), "the server closed the silent connection for the heartbeat timeout");
    server.stop().await;
}

#[tokio::test]
async fn reconnect_within_grace_stays_online() {
    let grace = Duration::from_millis(2000);
    let server = TestServer::start_with(|args| args.presence_grace_ms = grace.as_millis() as u64).await;
    let wendy = Client::member(&server, "wendy").await;
    let ana = Client::member(&server, "ana").await;
    let mut watcher = Watcher::connect(&server, &wendy).await;
    let first = ana.connect(&server).await;
    assert!(watcher.until(TIMEOUT, |view| view.has(&ana.id())).await, "ana is reported online");

    close_ws(first).await;
    let _second = ana.connect(&server).await;
    let frames = watcher.during(grace + Duration::from_millis(1500)).await;

    let went_offline: Vec<&Value> = frames
        .iter()
        .filter(|frame| ids_in(frame, "offline").contains(&ana.id()))
        .collect();
    assert!(went_offline.is_empty(), "a reload within the grace period sends no offline event: {went_offline:?}");
    assert!(watcher.view.has(&ana.id()), "ana is still shown online");
    let (_, presence) = wendy.get_json("/api/presence").await;
    let listed = presence["online"].as_array().unwrap().iter().any(|id| id == &json!(ana.id()));
    assert!(listed, "GET /api/presence lists ana: {presence}");
    server.stop().await;
}

#[tokio::test]
async fn two_tabs_offline_after_both_close() {
    let grace = Duration::from_millis(500);
    let server = TestServer::start_with(|args| args.presence_grace_ms = grace.as_millis() as u64).await;
    let wendy = Client::member(&server, "wendy").await;
    let ana = Client::member(&server, "ana").await;
    let mut watcher = Watcher::connect(&server, &wendy).await;
    let first_tab = ana.connect(&server).await;
    let second_tab = ana.connect(&server).await;
    assert!(watcher.until(TIMEOUT, |view| view.has(&ana.id())).await, "ana is reported online");

    close_ws(first_tab).await;
    let frames = watcher.during(grace + Duration::from_millis(1500)).await;
    let went_offline = frames.iter().any(|frame| ids_in(frame, "offline").contains(&ana.id()));
    assert!(!went_offline, "closing one of two tabs sends no offline event: {frames:?}");
    assert!(watcher.view.has(&ana.id()), "ana stays online with one tab open");

    close_ws(second_tab).await;
    let offline = watcher.until(TIMEOUT, |view| !view.has(&ana.id())).await;
    assert!(offline, "closing the last tab takes ana offline after the grace period");
    server.stop().await;
}

#[tokio::test]
async fn appear_offline_hides_and_delivers() {
    let server = TestServer::start_with(|args| args.presence_grace_ms = 500).await;
    let admin = Client::admin(&server, "root").await;
    let ana = Client::member(&server, "ana").await;
    let general = admin.channel_id("general").await;
    let mut watcher = Watcher::connect(&server, &admin).await;
    let mut ana_ws = ana.connect(&server).await;
    ana_ws.subscribe(&general, None, 10).await;
    assert!(watcher.until(TIMEOUT, |view| view.has(&ana.id())).await, "ana is reported online");

    ana_ws.send(json!({"op": "set_presence", "invisible": true})).await;
    let user = ana_ws.recv_op("user").await;
    assert_eq!(user["user"]["invisible"], true, "ana's own connection learns the new setting: {user}");
    let hidden = watcher.until(TIMEOUT, |view| !view.has(&ana.id())).await;
    assert!(hidden, "others see ana offline once she appears offline");
    let (_, presence) = admin.get_json("/api/presence").await;
    let listed = presence["online"].as_array().unwrap().iter().any(|id| id == &json!(ana.id()));
    assert!(!listed, "GET /api/presence leaves ana out: {presence}");

    let (status, _) = admin.post_message(&general, "still there?", "hidden-1").await;
    assert_eq!(status, 201, "the admin's message is stored");
    let delivered = ana_ws.recv_op("message").await;
    assert_eq!(delivered["message"]["content"], "still there?", "ana still receives messages: {delivered}");

    let second_tab = ana.connect(&server).await;
    assert_eq!(second_tab.ready["user"]["invisible"], true, "the setting is stored: {}", second_tab.ready);
    let frames = watcher.during(Duration::from_millis(1500)).await;
    let shown = frames.iter().any(|frame| ids_in(frame, "online").contains(&ana.id()));
    assert!(!shown, "a new connection of an invisible user is not announced: {frames:?}");

    let response = ana
        .http
        .put(format!("{}/api/presence", ana.base))
        .bearer_auth(&ana.token)
        .json(&json!({"invisible": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "PUT /api/presence accepts the change");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["invisible"], false, "the response carries the new setting: {body}");
    let visible = watcher.until(TIMEOUT, |view| view.has(&ana.id())).await;
    assert!(visible, "ana is shown online again once visible");
    server.stop().await;
}

/// Reads frames until the `message` frame with `content`, and returns the
/// frames before it.
async fn frames_until_message(ws: &mut WsClient, content: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let frame = ws.recv().await;
        if frame["op"] == "message" && frame["message"]["content"] == content {
            return before;
        }
        before.push(frame);
    }
}

#[tokio::test]
async fn typing_reaches_others_throttled() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "root").await;
    let ana = Client::member(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;
    let cara = Client::member(&server, "cara").await;
    let general = ana.channel_id("general").await;
    let mut ana_ws = ana.connect(&server).await;
    let mut bob_ws = bob.connect(&server).await;
    let mut cara_ws = cara.connect(&server).await;
    for ws in [&mut ana_ws, &mut bob_ws, &mut cara_ws] {
        ws.subscribe(&general, None, 10).await;
    }

    ana_ws.send(json!({"op": "typing", "channel": general})).await;
    for (name, ws) in [("bob", &mut bob_ws), ("cara", &mut cara_ws)] {
        let typing = ws.recv_op("typing").await;
        assert_eq!(typing["channel"], json!(general), "{name} learns the channel: {typing}");
        assert_eq!(typing["user"]["id"], json!(ana.id()), "{name} learns who types: {typing}");
        assert_eq!(typing["user"]["name"], "ana", "{name} gets the typist's name: {typing}");
    }

    // Two more within the interval, then a message that marks the end.
    ana_ws.send(json!({"op": "typing", "channel": general})).await;
    ana_ws.send(json!({"op": "typing", "channel": general})).await;
    ana_ws.send(json!({"op": "send", "channel": general, "content": "marker", "nonce": "marker-1"})).await;
    let before_marker = frames_until_message(&mut bob_ws, "marker").await;
    let repeated = before_marker.iter().filter(|frame| frame["op"] == "typing").count();
    assert_eq!(repeated, 0, "repeated typing within the interval is not relayed: {before_marker:?}");
    let own = frames_until_message(&mut ana_ws, "marker").await;
    let echoed = own.iter().filter(|frame| frame["op"] == "typing").count();
    assert_eq!(echoed, 0, "the typist does not get their own typing frames: {own:?}");

    tokio::time::sleep(aura::hub::TYPING_INTERVAL + Duration::from_millis(200)).await;
    ana_ws.send(json!({"op": "typing", "channel": general})).await;
    let again = bob_ws.recv_op("typing").await;
    assert_eq!(again["user"]["id"], json!(ana.id()), "typing is relayed again after the interval: {again}");

    let (_, layout) = admin.get_json("/api/layout").await;
    let category = layout["categories"][0]["id"].as_str().unwrap().to_string();
    let response = admin
        .post("/api/channels")
        .json(&json!({"category": category, "name": "vip", "min_tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the admin creates a pro channel");
    let vip = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    ana_ws.send(json!({"op": "typing", "channel": vip})).await;
    let error = ana_ws.recv_op("error").await;
    assert_eq!(error["code"], "not_found", "typing in a channel ana may not read is refused: {error}");
    server.stop().await;
}

#[tokio::test]
async fn connection_cap_refuses_then_accepts() {
    let server = TestServer::start().await;
    let ana = Client::member(&server, "ana").await;
    let cap = ServeArgs::for_tests("/unused").max_connections_per_user;
    assert_eq!(cap, 20, "the documented default cap is 20");

    let mut tabs = Vec::new();
    for _ in 0..cap {
        tabs.push(ana.connect(&server).await);
    }
    let refused = open_ws(server.addr, &ana.token).await;
    assert_eq!(
        refused.err(),
        Some(CLOSE_TOO_MANY_CONNECTIONS),
        "connection {} is closed with the cap's close code",
        cap + 1
    );

    close_ws(tabs.pop().unwrap()).await;
    let mut accepted = None;
    for _ in 0..50 {
        match open_ws(server.addr, &ana.token).await {
            Ok(ws) => {
                accepted = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(accepted.is_some(), "a new connection is accepted once one of the {cap} closed");
    server.stop().await;
}

/// A server started in this test, with access to its shared state for the
/// presence counters.
struct LoadServer {
    addr: SocketAddr,
    app: Arc<App>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl LoadServer {
    async fn start(adjust: impl FnOnce(&mut ServeArgs)) -> LoadServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args = ServeArgs::for_tests(dir.path());
        // 200 users register and their 2,000 sockets come from one address,
        // far above the per-address limits that protect a public server.
        args.registrations_per_hour = 1_000_000;
        args.max_connections_per_ip = 1_000_000;
        adjust(&mut args);
        let server = Server::open(args.validate().expect("test flags are valid"))
            .await
            .expect("server opens its data directory");
        let app = server.app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        LoadServer {
            addr,
            app,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Registers a member and returns their session token.
    async fn member_token(&self, http: &reqwest::Client, name: &str) -> String {
        let base = format!("http://{}", self.addr);
        let credentials = json!({"username": name, "password": PASSWORD});
        let response = http.post(format!("{base}/api/register")).json(&credentials).send().await.unwrap();
        assert_eq!(response.status(), 201, "register {name}");
        let response = http.post(format!("{base}/api/session")).json(&credentials).send().await.unwrap();
        assert_eq!(response.status(), 200, "log in {name}");
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops within 30 s")
            .expect("server task did not panic");
        result.expect("server shut down cleanly");
    }
}

/// Opens `count` WebSockets for one token at once.
async fn open_many(addr: SocketAddr, token: &str, count: usize) -> Vec<WsClient> {
    let opened = futures_util::future::join_all((0..count).map(|_| open_ws(addr, token))).await;
    opened
        .into_iter()
        .map(|ws| ws.unwrap_or_else(|code| panic!("connection refused with {code}")))
        .collect()
}

/// Raises the open-file soft limit to the hard limit, for tests that open
/// thousands of sockets.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// User plus system CPU time of this whole process (server and clients).
fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct, which is zeroed and valid either way.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_2000_connections_is_coalesced() {
    const USERS: usize = 200;
    const TABS: usize = 10;
    const CHURN: Duration = Duration::from_secs(8);
    const GRACE: Duration = Duration::from_millis(200);
    // Longer than the grace period, so that every user who leaves is
    // reported offline before they come back.
    const AWAY: Duration = Duration::from_millis(700);
    raise_open_file_limit();
    let server = LoadServer::start(|args| {
        // The idle tabs send no heartbeats during the test.
        args.heartbeat_ms = 120_000;
        args.presence_grace_ms = GRACE.as_millis() as u64;
    })
    .await;
    let http = reqwest::Client::new();

    let setup_started = Instant::now();
    let names: Vec<String> = (0..=USERS).map(|i| format!("user{i}")).collect();
    let tokens: Vec<String> = futures_util::stream::iter(names.iter().map(|name| server.member_token(&http, name)))
        .buffered(8)
        .collect()
        .await;
    let (watcher_token, tokens) = tokens.split_last().unwrap();
    println!("setup: {} users registered in {:?}", tokens.len() + 1, setup_started.elapsed());
    let mut tabs: Vec<Vec<WsClient>> = Vec::new();
    for batch in tokens.chunks(10) {
        let opened = futures_util::future::join_all(batch.iter().map(|token| open_many(server.addr, token, TABS))).await;
        tabs.extend(opened);
    }
    let open: usize = tabs.iter().map(Vec::len).sum();
    assert_eq!(open, USERS * TABS, "every connection opened");
    println!("setup: {USERS} users, {open} connections in {:?}", setup_started.elapsed());

    let mut watcher = Watcher::new(open_ws(server.addr, watcher_token).await.expect("watcher connects"));
    let all_online = watcher.until(TIMEOUT * 2, |view| view.online.len() >= USERS).await;
    assert!(all_online, "the watcher sees every user online");

    // Churn: every step one user closes every tab (dropped without a close
    // frame), users who left more than AWAY ago open them all again, and
    // another user reloads two tabs.
    let stats_before = server.app.presence.stats();
    let cpu_before = process_cpu_time();
    let churn_started = Instant::now();
    let watching = tokio::spawn(async move {
        watcher.during(CHURN).await;
        watcher
    });
    let mut away: std::collections::VecDeque<(usize, Instant)> = std::collections::VecDeque::new();
    let mut steps = 0usize;
    let mut reopened = 0usize;
    while churn_started.elapsed() < CHURN && steps < 10_000 {
        let leaving = steps % USERS;
        if !tabs[leaving].is_empty() {
            tabs[leaving].clear();
            away.push_back((leaving, Instant::now()));
        }
        while let Some(&(back, since)) = away.front() {
            if since.elapsed() < AWAY {
                break;
            }
            away.pop_front();
            tabs[back] = open_many(server.addr, &tokens[back], TABS).await;
            reopened += TABS;
        }
        let reloading = (steps * 7 + 3) % USERS;
        if tabs[reloading].len() >= 2 {
            tabs[reloading].truncate(TABS - 2);
            tabs[reloading].extend(open_many(server.addr, &tokens[reloading], 2).await);
            reopened += 2;
        }
        steps += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watcher = watching.await.expect("watcher task did not panic");
    let churn_elapsed = churn_started.elapsed();
    let cpu = process_cpu_time() - cpu_before;
    let stats = server.app.presence.stats();

    let in_window: Vec<&Value> = watcher
        .frames
        .iter()
        .filter(|(at, _)| *at >= churn_started)
        .map(|(_, frame)| frame)
        .collect();
    let changes: usize = in_window
        .iter()
        .map(|frame| ids_in(frame, "online").len() + ids_in(frame, "offline").len())
        .sum();
    let window_secs = churn_elapsed.as_secs_f64();
    let busy = Duration::from_micros(stats.busy_micros - stats_before.busy_micros);
    println!(
        "churn: {steps} steps, {reopened} connections reopened in {churn_elapsed:?}; the watcher got {} presence \
         frames carrying {changes} changes",
        in_window.len()
    );
    println!(
        "presence CPU: {busy:?} over {churn_elapsed:?} ({:.3}% of one core), {} pushes, {} deltas queued, \
         {} dropped, {} snapshots; whole test process (server and {open} clients): {cpu:?}",
        busy.as_secs_f64() / window_secs * 100.0,
        stats.pushes - stats_before.pushes,
        stats.deltas_queued - stats_before.deltas_queued,
        stats.deltas_dropped - stats_before.deltas_dropped,
        stats.snapshots_queued - stats_before.snapshots_queued,
    );
    assert!(!in_window.is_empty(), "churn produced presence frames");
    assert!(
        in_window.len() as f64 <= window_secs + 2.0,
        "at most about one presence frame per second: {} frames in {window_secs:.1} s",
        in_window.len()
    );
    assert!(
        changes > in_window.len(),
        "frames carry several changes each: {changes} changes in {} frames",
        in_window.len()
    );

    let expected: HashSet<String> = tabs
        .iter()
        .filter(|open| !open.is_empty())
        .map(|open| open[0].ready["user"]["id"].as_str().unwrap().to_string())
        .chain(std::iter::once(watcher.ws.ready["user"]["id"].as_str().unwrap().to_string()))
        .collect();
    let converged = watcher.until(TIMEOUT, |view| view.online == expected).await;
    assert!(
        converged,
        "after the churn the watcher's view matches the users with open tabs: {} shown, {} expected",
        watcher.view.online.len(),
        expected.len()
    );

    drop(tabs);
    drop(watcher);
    server.stop().await;
}

