//! Connection and HTTP limits: total and per-address connections, WebSockets
//! per user, the API and long-poll concurrency pools, the request head size,
//! the header read timeout and the idle keep-alive timeout.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Attempts of a bounded retry loop, and the pause between them.
const RETRIES: usize = 100;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Opens a TCP connection that sends nothing.
async fn idle_connection(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.addr).await.expect("connect to the test server")
}

/// Reads from `stream` until EOF or an error and returns the bytes; panics
/// after [`TIMEOUT`] times three.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(TIMEOUT * 3, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(count) => bytes.extend_from_slice(&buffer[..count]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server closes the connection in time; read so far: {:?}", String::from_utf8_lossy(&bytes));
    bytes
}

/// Reads one HTTP response that ends with `marker`; panics after [`TIMEOUT`].
async fn read_response_containing(stream: &mut TcpStream, marker: &str) -> String {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&bytes).contains(marker) {
        let count = tokio::time::timeout(TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("the response arrives in time")
            .expect("the response reads");
        assert!(count > 0, "the connection stays open until the response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buffer[..count]);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// GET /healthz with a new client; returns the status, Retry-After and body.
async fn healthz(server: &TestServer) -> (u16, Option<String>, Value) {
    let response = http().get(server.url("/healthz")).send().await.expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

/// Opens a WebSocket with a bearer token and optional X-Forwarded-For;
/// returns the HTTP status of a refused upgrade as the error.
async fn open_socket(server: &TestServer, token: &str, forwarded_for: Option<&str>) -> Result<WsClient, u16> {
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("Authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(address) = forwarded_for {
        headers.insert("X-Forwarded-For", address.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => {
            let mut client = WsClient { stream, ready: Value::Null };
            client.ready = client.recv().await;
            Ok(client)
        }
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("the upgrade fails only with an HTTP status: {other}"),
    }
}

#[tokio::test]
async fn connections_over_total_get_503() {
    let server = TestServer::start_with(|args| args.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_connection(&server).await);
    }

    let (status, retry_after, body) = healthz(&server).await;
    assert_eq!(status, 503, "a fourth connection over --max-connections 3 gets 503: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "the body names the error: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "the refusal says when to retry");

    drop(held.pop());
    let mut recovered = false;
    for _ in 0..RETRIES {
        if healthz(&server).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    assert!(recovered, "a connection is admitted again once one of the three closes");
    server.stop().await;
}

#[tokio::test]
async fn connections_over_per_address_get_429() {
    let server = TestServer::start_with(|args| args.max_connections_per_ip = 2).await;
    let _held = [idle_connection(&server).await, idle_connection(&server).await];
    let (status, _, body) = healthz(&server).await;
    assert_eq!(status, 429, "a third connection from one address gets 429: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "the body names the error: {body}");
    server.stop().await;
}

#[tokio::test]
async fn trusted_proxy_connections_skip_address_count() {
    let server = TestServer::start_with(|args| {
        args.max_connections_per_ip = 2;
        args.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let _held = [idle_connection(&server).await, idle_connection(&server).await, idle_connection(&server).await];
    let (status, _, body) = healthz(&server).await;
    assert_eq!(status, 200, "connections from a trusted proxy are not counted per address: {body}");
    server.stop().await;
}

#[tokio::test]
async fn proxied_sockets_count_per_forwarded_address() {
    let server = TestServer::start_with(|args| {
        args.max_connections_per_ip = 2;
        args.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let ana = Client::admin(&server, "ana").await;
    let first = "203.0.113.7";
    let _a = open_socket(&server, &ana.token, Some(first)).await.expect("first socket from an address opens");
    let _b = open_socket(&server, &ana.token, Some(first)).await.expect("second socket from an address opens");
    let third = open_socket(&server, &ana.token, Some(first)).await;
    assert_eq!(third.err(), Some(429), "a third socket forwarded for one address gets 429");
    let other = open_socket(&server, &ana.token, Some("203.0.113.8")).await;
    assert!(other.is_ok(), "a socket forwarded for another address opens");
    server.stop().await;
}

#[tokio::test]
async fn api_requests_over_concurrency_get_503() {
    let server = TestServer::start_with(|args| args.max_api_concurrency = 1).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    // A request whose body never finishes keeps the only API permit.
    let mut slow = idle_connection(&server).await;
    let head = format!(
        "POST /api/channels/{general}/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"content\":",
        server.addr, ana.token
    );
    slow.write_all(head.as_bytes()).await.unwrap();

    let mut refused = None;
    for _ in 0..RETRIES {
        let response = ana.get("/api/layout").send().await.unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let refused = refused.expect("an API request gets 503 while the only permit is taken");
    assert_eq!(
        refused.headers().get("retry-after").map(|value| value.to_str().unwrap().to_string()),
        Some("1".to_string()),
        "the 503 says when to retry"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "the 503 body names the error: {body}");

    let page = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page is served while the API is at its limit");

    drop(slow);
    let mut recovered = false;
    for _ in 0..RETRIES {
        if ana.get("/api/layout").send().await.unwrap().status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    assert!(recovered, "API requests succeed again once the slow request ends");
    server.stop().await;
}

#[tokio::test]
async fn long_polls_have_own_pool() {
    let server = TestServer::start_with(|args| {
        args.max_api_concurrency = 1;
        args.max_long_polls = 1;
    })
    .await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;
    let (status, seed) = ana.post_message(&general, "seed", "seed-1").await;
    assert_eq!(status, 201, "the seed message is sent: {seed}");
    let seed_rev = seed["message"]["rev"].as_str().unwrap().to_string();

    // The waiting poll retries while a probe below holds the only long-poll permit.
    let waiting = tokio::spawn({
        let ana = ana.clone();
        let path = format!("/api/channels/{general}/messages?after={seed_rev}&wait=25");
        async move {
            for _ in 0..RETRIES {
                let (status, body) = ana.get_json(&path).await;
                if status != 503 {
                    return (status, body);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            panic!("the waiting poll never got the long-poll permit");
        }
    });

    // A probe after the seed returns at once when admitted, so it holds the permit only briefly.
    let mut refused = false;
    for _ in 0..RETRIES {
        let (status, body) = ana
            .get_json(&format!("/api/channels/{general}/messages?after=0&wait=1"))
            .await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "unavailable", "the refused long poll names the error: {body}");
            refused = true;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    assert!(refused, "a second long poll over --max-long-polls 1 gets 503");

    let (status, body) = ana.get_json("/api/layout").await;
    assert_eq!(status, 200, "a waiting long poll leaves the API pool free: {body}");
    let (status, body) = ana.post_message(&general, "wake up", "wake-1").await;
    assert_eq!(status, 201, "a send works while a long poll waits: {body}");

    let (status, body) = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("the long poll returns after the send")
        .unwrap();
    assert_eq!(status, 200, "the waiting long poll succeeds: {body}");
    assert_eq!(body["messages"][0]["content"], "wake up", "the long poll returns the new message: {body}");
    server.stop().await;
}

#[tokio::test]
async fn request_head_over_limit_gets_431() {
    let server = TestServer::start_with(|args| args.max_header_bytes = 2048).await;
    let response = http()
        .get(server.url("/healthz"))
        .header("X-Padding", "a".repeat(4000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431, "a 4000-byte header over --max-header-bytes 2048 gets 431");

    let response = http()
        .get(server.url("/healthz"))
        .header("X-Padding", "a".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a head under the limit is served");
    server.stop().await;
}

#[tokio::test]
async fn slow_request_head_is_closed() {
    let server = TestServer::start_with(|args| {
        args.header_read_timeout_ms = 300;
        args.keep_alive_timeout_ms = 600_000;
    })
    .await;
    let mut stream = idle_connection(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n").await.unwrap();
    let received = read_until_closed(&mut stream).await;
    assert!(
        received.is_empty(),
        "a head still incomplete after --header-read-timeout-ms gets no response: {:?}",
        String::from_utf8_lossy(&received)
    );
    server.stop().await;
}

#[tokio::test]
async fn stalled_request_body_gets_408() {
    let server = TestServer::start_with(|args| args.body_read_timeout_ms = 300).await;
    let mut stream = idle_connection(&server).await;
    let head = "POST /api/register HTTP/1.1\r\nHost: stall\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"username\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_response_containing(&mut stream, r#""code":"timeout""#).await;
    assert!(response.starts_with("HTTP/1.1 408"), "a body stalled past --body-read-timeout-ms gets 408: {response}");
    server.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_is_closed() {
    let server = TestServer::start_with(|args| {
        args.header_read_timeout_ms = 600_000;
        args.keep_alive_timeout_ms = 300;
    })
    .await;
    let mut stream = idle_connection(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n").await.unwrap();
    let response = read_response_containing(&mut stream, r#""status":"ok""#).await;
    assert!(response.starts_with("HTTP/1.1 200"), "the request is answered: {response}");
    assert!(!response.to_ascii_lowercase().contains("connection: close"), "the answer keeps the connection alive: {response}");

    let after = read_until_closed(&mut stream).await;
    assert!(after.is_empty(), "an idle keep-alive connection is closed without more data: {after:?}");
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_spares_long_poll() {
    let server = TestServer::start_with(|args| args.keep_alive_timeout_ms = 100).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;
    // A new client, so that no pooled connection is closed by the keep-alive timeout under it.
    let response = http()
        .get(server.url(&format!("/api/channels/{general}/messages?after=0&wait=1")))
        .bearer_auth(&ana.token)
        .send()
        .await
        .expect("the long poll is answered");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "a long poll longer than the keep-alive timeout completes: {body}");
    assert_eq!(body, json!({"messages": [], "has_more": false}), "the poll returns no change: {body}");
    server.stop().await;
}
