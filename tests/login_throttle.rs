//! Failed-login throttling per username and per client address, the same
//! answer for unknown and known names, unlocking by an admin over HTTP and
//! the CLI, the registration rate limit, and X-Forwarded-For behind a
//! trusted proxy.

mod common;

use std::time::Duration;

use aura::config::ServeArgs;
use common::*;
use serde_json::{json, Value};

const WRONG_PASSWORD: &str = "not the password";

/// Documentation addresses (RFC 5737), only ever sent as header values.
const ADDRESS_A: &str = "203.0.113.5";
const ADDRESS_B: &str = "203.0.113.6";

/// A login answer: status, Retry-After header and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// Logs in, with an X-Forwarded-For header when `from` is given.
async fn login_from(server: &TestServer, name: &str, password: &str, from: Option<&str>) -> Answer {
    let mut request = http()
        .post(server.url("/api/session"))
        .json(&json!({"username": name, "password": password}));
    if let Some(address) = from {
        request = request.header("X-Forwarded-For", address);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().parse().unwrap()),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

/// Registers, with an X-Forwarded-For header when `from` is given; returns status and body.
async fn register_from(server: &TestServer, name: &str, from: Option<&str>) -> (u16, Value) {
    let mut request = http()
        .post(server.url("/api/register"))
        .json(&json!({"username": name, "password": PASSWORD}));
    if let Some(address) = from {
        request = request.header("X-Forwarded-For", address);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Asserts a throttled answer: 429, `rate_limited`, and a retry hint in
/// the body and the header.
fn assert_throttled(answer: &Answer, case: &str) -> u64 {
    assert_eq!(answer.status, 429, "{case}: the attempt is throttled: {answer:?}");
    assert_eq!(answer.body["error"]["code"], "rate_limited", "{case}: the code is rate_limited: {answer:?}");
    let retry_after_ms = answer.body["error"]["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{case}: the body has retry_after_ms: {answer:?}"));
    assert!(answer.retry_after.is_some(), "{case}: the Retry-After header is set: {answer:?}");
    retry_after_ms
}

fn thresholds(delay_after: u32, lock_after: u32) -> impl FnOnce(&mut ServeArgs) {
    move |args| {
        args.login_delay_after = delay_after;
        args.login_lock_after = lock_after;
    }
}

fn behind_proxy(args: &mut ServeArgs) {
    args.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
}

#[tokio::test]
async fn failures_delay_then_lock_username() {
    let server = TestServer::start_with(thresholds(2, 3)).await;
    Client::admin(&server, "ana").await;

    for attempt in 1..=2 {
        let answer = login_from(&server, "ana", WRONG_PASSWORD, None).await;
        assert_eq!(answer.status, 401, "failure {attempt} below the threshold gets 401: {answer:?}");
    }
    let answer = login_from(&server, "ana", PASSWORD, None).await;
    let delay = assert_throttled(&answer, "after 2 failures");
    assert!((1..=1000).contains(&delay), "the first delay is at most one second, found {delay} ms");

    tokio::time::sleep(Duration::from_millis(delay + 50)).await;
    let answer = login_from(&server, "ana", WRONG_PASSWORD, None).await;
    assert_eq!(answer.status, 401, "an attempt after the delay is checked again: {answer:?}");

    let answer = login_from(&server, "ana", PASSWORD, None).await;
    let lock = assert_throttled(&answer, "after 3 failures");
    assert!(lock > 60_000, "3 failures lock the username for minutes, found {lock} ms");
    server.stop().await;
}

#[tokio::test]
async fn throttled_answer_hides_account_existence() {
    let server = TestServer::start_with(thresholds(2, 10)).await;
    Client::admin(&server, "ana").await;

    let mut failures = Vec::new();
    for name in ["ana", "ghost"] {
        for _ in 0..2 {
            failures.push(login_from(&server, name, WRONG_PASSWORD, None).await);
        }
    }
    for answer in &failures {
        assert_eq!(answer.status, 401, "every failure gets 401: {answer:?}");
        assert_eq!(answer.body, failures[0].body, "failures for known and unknown names have one body");
    }

    let known = login_from(&server, "ana", WRONG_PASSWORD, None).await;
    let unknown = login_from(&server, "ghost", WRONG_PASSWORD, None).await;
    assert_throttled(&known, "existing account");
    assert_throttled(&unknown, "unknown name");
    assert_eq!(
        known.body["error"]["message"], unknown.body["error"]["message"],
        "the throttled message is the same for a known and an unknown name"
    );
    assert_eq!(
        known.body["error"].as_object().unwrap().keys().collect::<Vec<_>>(),
        unknown.body["error"].as_object().unwrap().keys().collect::<Vec<_>>(),
        "the throttled body has the same fields for a known and an unknown name"
    );
    server.stop().await;
}

#[tokio::test]
async fn success_resets_username_failures() {
    let server = TestServer::start_with(thresholds(2, 10)).await;
    Client::admin(&server, "ana").await;

    let answer = login_from(&server, "ana", WRONG_PASSWORD, None).await;
    assert_eq!(answer.status, 401, "the first failure gets 401");
    let answer = login_from(&server, "ana", PASSWORD, None).await;
    assert_eq!(answer.status, 200, "the right password logs in before the threshold: {answer:?}");
    for attempt in 1..=2 {
        let answer = login_from(&server, "ana", WRONG_PASSWORD, None).await;
        assert_eq!(answer.status, 401, "failure {attempt} after a success starts a new count: {answer:?}");
    }
    let answer = login_from(&server, "ana", PASSWORD, None).await;
    assert_throttled(&answer, "2 failures after the success");
    server.stop().await;
}

#[tokio::test]
async fn admin_endpoint_unlocks_username() {
    let server = TestServer::start_with(thresholds(1, 1)).await;
    let ana = Client::admin(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;

    let answer = login_from(&server, "bob", WRONG_PASSWORD, None).await;
    assert_eq!(answer.status, 401, "bob's failure gets 401");
    let answer = login_from(&server, "bob", PASSWORD, None).await;
    assert_throttled(&answer, "bob after one failure with --login-lock-after 1");

    let response = bob.delete(&format!("/api/users/{}/lock", bob.id())).send().await.unwrap();
    assert_eq!(response.status(), 403, "a member may not clear a lock");

    let response = ana.delete(&format!("/api/users/{}/lock", bob.id())).send().await.unwrap();
    assert_eq!(response.status(), 200, "an admin clears the lock");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["unlocked"], true, "the answer says a lock was cleared: {body}");
    assert_eq!(body["user"]["name"], "bob", "the answer names the user: {body}");

    let answer = login_from(&server, "bob", PASSWORD, None).await;
    assert_eq!(answer.status, 200, "bob logs in after the unlock: {answer:?}");

    let response = ana.delete(&format!("/api/users/{}/lock", bob.id())).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["unlocked"], false, "a second unlock finds nothing to clear: {body}");
    server.stop().await;
}

#[tokio::test]
async fn cli_unlock_clears_username_lock() {
    let server = TestServer::start_with(thresholds(1, 1)).await;
    Client::admin(&server, "ana").await;
    Client::member(&server, "bob").await;
    let answer = login_from(&server, "bob", WRONG_PASSWORD, None).await;
    assert_eq!(answer.status, 401, "bob's failure gets 401");
    assert_throttled(&login_from(&server, "bob", PASSWORD, None).await, "bob after one failure");

    let data_dir = server.data_dir().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["user", "unlock", "BOB", "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("the aura binary runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "aura user unlock succeeds: {output:?}");
    assert!(stdout.contains("bob: login lock cleared"), "the CLI reports the cleared lock: {stdout}");

    let answer = login_from(&server, "bob", PASSWORD, None).await;
    assert_eq!(answer.status, 200, "bob logs in after the CLI unlock: {answer:?}");

    let data_dir = server.data_dir().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["user", "unlock", "nobody", "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("the aura binary runs")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "unlocking an unknown user fails: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not found"), "the CLI says the user was not found: {stderr}");
    server.stop().await;
}

#[tokio::test]
async fn address_throttle_spans_usernames() {
    // Per-username thresholds of 5 give a client address 20.
    let server = TestServer::start_with(|args| {
        thresholds(5, 5)(args);
        behind_proxy(args);
    })
    .await;
    Client::admin(&server, "ana").await;

    for index in 0..20 {
        let answer = login_from(&server, &format!("guess{index}"), WRONG_PASSWORD, Some(ADDRESS_A)).await;
        assert_eq!(answer.status, 401, "failure {index} from one address gets 401: {answer:?}");
    }
    let answer = login_from(&server, "ana", PASSWORD, Some(ADDRESS_A)).await;
    assert_throttled(&answer, "a 21st attempt from the same address");

    let answer = login_from(&server, "ana", PASSWORD, Some(ADDRESS_B)).await;
    assert_eq!(answer.status, 200, "another address logs in: {answer:?}");
    server.stop().await;
}

#[tokio::test]
async fn registrations_limited_per_address() {
    let server = TestServer::start_with(|args| {
        args.registrations_per_hour = 2;
        behind_proxy(args);
    })
    .await;
    for name in ["amy", "ben"] {
        let (status, body) = register_from(&server, name, Some(ADDRESS_A)).await;
        assert_eq!(status, 201, "registration of {name} within the limit succeeds: {body}");
    }
    let (status, body) = register_from(&server, "cat", Some(ADDRESS_A)).await;
    assert_eq!(status, 429, "a third registration from one address in an hour gets 429: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "the code is rate_limited: {body}");
    let retry_after_ms = body["error"]["retry_after_ms"].as_u64().unwrap_or_default();
    assert!(retry_after_ms > 60_000, "the retry hint is the time to the next token, found {retry_after_ms} ms");

    let (status, body) = register_from(&server, "cat", Some(ADDRESS_B)).await;
    assert_eq!(status, 201, "another address may register: {body}");
    server.stop().await;
}

#[tokio::test]
async fn forwarded_for_ignored_without_trusted_proxy() {
    let server = TestServer::start_with(|args| args.registrations_per_hour = 1).await;
    let (status, body) = register_from(&server, "amy", Some(ADDRESS_A)).await;
    assert_eq!(status, 201, "the first registration succeeds: {body}");
    let (status, body) = register_from(&server, "ben", Some(ADDRESS_B)).await;
    assert_eq!(
        status, 429,
        "without --trusted-proxy a forged X-Forwarded-For does not escape the per-address limit: {body}"
    );
    server.stop().await;
}
