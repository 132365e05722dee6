//! The HTTP API: sending, validation, polling and long polling, edits and
//! deletes, error bodies and the static page.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};

/// Parses a decimal-string id or rev.
fn number(value: &Value) -> u64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a decimal string, found {value}"))
        .parse()
        .unwrap_or_else(|_| panic!("expected a decimal string, found {value}"))
}

/// Returns the revs in a list of message objects, as u64.
fn revs(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|message| number(&message["rev"])).collect()
}

/// Reads every change in a channel with `after=0`, page by page.
async fn all_changes(client: &Client, channel: &str) -> Vec<Value> {
    let mut changes = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let (status, body) = client
            .get_json(&format!("/api/channels/{channel}/messages?after={after}&limit=200"))
            .await;
        assert_eq!(status, 200, "polling after={after} succeeds: {body}");
        let page = body["messages"].as_array().unwrap().clone();
        if let Some(last) = page.last() {
            after = number(&last["rev"]);
        }
        changes.extend(page);
        if body["has_more"] != true {
            return changes;
        }
    }
    panic!("polling did not reach the end within 100 pages");
}

/// Sends `count` messages over one WebSocket without waiting between them,
/// then collects every ack. Returns (nonce, id) in send order.
async fn send_pipelined(ws: &mut WsClient, channel: &str, count: usize, prefix: &str) -> Vec<(String, u64)> {
    for i in 0..count {
        let nonce = format!("{prefix}-{i}");
        ws.send(json!({"op": "send", "channel": channel, "content": format!("message {i}"), "nonce": nonce}))
            .await;
    }
    let mut acks = std::collections::HashMap::new();
    while acks.len() < count {
        let frame = ws.recv().await;
        match frame["op"].as_str() {
            Some("ack") => {
                acks.insert(frame["nonce"].as_str().unwrap().to_string(), number(&frame["id"]));
            }
            Some("error") => panic!("a pipelined send failed: {frame}"),
            _ => continue,
        }
    }
    (0..count)
        .map(|i| {
            let nonce = format!("{prefix}-{i}");
            let id = acks[&nonce];
            (nonce, id)
        })
        .collect()
}

/// Asserts that an error response has the JSON error shape and this code.
fn assert_error_body(body: &Value, code: &str, case: &str) {
    assert_eq!(body["error"]["code"], code, "{case}: error code: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()),
        "{case}: the error has a message: {body}"
    );
}

#[tokio::test]
async fn post_message_returns_created() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let (status, body) = ana.post_message(&general, "hello", "n-1").await;
    assert_eq!(status, 201, "a new message gets 201: {body}");
    let message = &body["message"];
    assert_eq!(message["content"], "hello", "the message has its content: {body}");
    assert_eq!(message["channel"], general.as_str(), "the message names its channel: {body}");
    assert_eq!(message["author"]["name"], "ana", "the message names its author: {body}");
    assert_eq!(message["author"]["id"], ana.id().as_str(), "the author id is the sender's: {body}");
    assert_eq!(message["nonce"], "n-1", "the message keeps its nonce: {body}");
    assert_eq!(message["rev"], message["id"], "a new message has rev = id: {body}");
    assert_eq!(message["edited_ts"], Value::Null, "a new message is not edited: {body}");
    assert_eq!(message["deleted"], false, "a new message is not deleted: {body}");
    assert!(message["ts"].as_u64().is_some_and(|ts| ts > 0), "ts is milliseconds since the epoch: {body}");
    server.stop().await;
}

#[tokio::test]
async fn repeated_nonce_returns_original() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let (status, first) = ana.post_message(&general, "only once", "n-1").await;
    assert_eq!(status, 201, "the first send creates the message: {first}");

    let (status, second) = ana.post_message(&general, "only once", "n-1").await;
    assert_eq!(status, 200, "a repeated nonce gets 200: {second}");
    assert_eq!(second["message"]["id"], first["message"]["id"], "a repeated nonce returns the original id");

    let (status, third) = ana.post_message(&general, "different text", "n-1").await;
    assert_eq!(status, 200, "a repeated nonce with other content gets 200: {third}");
    assert_eq!(third["message"]["content"], "only once", "a repeated nonce returns the original content");

    let changes = all_changes(&ana, &general).await;
    assert_eq!(changes.len(), 1, "three sends with one nonce created one message: {changes:?}");
    server.stop().await;
}

#[tokio::test]
async fn invalid_messages_are_rejected() {
    let server = TestServer::start_with(|args| args.max_message_chars = 10).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let cases = [
        ("", "n-empty", 400, "bad_request", "empty content"),
        (" \n\t  ", "n-space", 400, "bad_request", "whitespace-only content"),
        ("abcdefghijk", "n-long", 413, "too_large", "11 characters over a maximum of 10"),
        ("a\u{7}b", "n-bell", 400, "bad_request", "a BEL control character"),
        ("a\rb", "n-cr", 400, "bad_request", "a carriage return"),
        ("a\u{1b}[2Jb", "n-esc", 400, "bad_request", "an escape sequence"),
    ];
    for (content, nonce, status, code, case) in cases {
        let (actual, body) = ana.post_message(&general, content, nonce).await;
        assert_eq!(actual, status, "{case}: status: {body}");
        assert_error_body(&body, code, case);
    }

    let long_nonce = "n".repeat(65);
    let (status, body) = ana.post_message(&general, "fine", &long_nonce).await;
    assert_eq!(status, 400, "a 65-character nonce gets 400: {body}");
    assert_error_body(&body, "bad_request", "a 65-character nonce");
    let (status, body) = ana.post_message(&general, "fine", "").await;
    assert_eq!(status, 400, "an empty nonce gets 400: {body}");

    let changes = all_changes(&ana, &general).await;
    assert!(changes.is_empty(), "rejected sends created nothing: {changes:?}");
    server.stop().await;
}

#[tokio::test]
async fn valid_content_is_trimmed_and_counted() {
    let server = TestServer::start_with(|args| args.max_message_chars = 10).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let (status, body) = ana.post_message(&general, "  hi there \n", "n-trim").await;
    assert_eq!(status, 201, "content with surrounding whitespace is accepted: {body}");
    assert_eq!(body["message"]["content"], "hi there", "surrounding whitespace is trimmed: {body}");

    // Ten emoji are 40 bytes in UTF-8 and ten Unicode scalar values.
    let emoji = "😀".repeat(10);
    let (status, body) = ana.post_message(&general, &emoji, "n-emoji").await;
    assert_eq!(status, 201, "exactly 10 scalar values pass a maximum of 10: {body}");
    assert_eq!(body["message"]["content"], emoji.as_str(), "emoji content is stored unchanged: {body}");

    let padded = format!("   {}   ", "x".repeat(10));
    let (status, body) = ana.post_message(&general, &padded, "n-padded").await;
    assert_eq!(status, 201, "the limit applies after trimming: {body}");

    let (status, body) = ana.post_message(&general, "one\n\ttwo", "n-newline").await;
    assert_eq!(status, 201, "newline and tab are allowed: {body}");
    assert_eq!(body["message"]["content"], "one\n\ttwo", "inner newline and tab are kept: {body}");
    server.stop().await;
}

#[tokio::test]
async fn announcements_accept_only_admins() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;
    let announcements = ana.channel_id("announcements").await;

    let (status, body) = bob.post_message(&announcements, "hi all", "b-1").await;
    assert_eq!(status, 403, "a member may not post in announcements: {body}");
    assert_error_body(&body, "forbidden", "member posting in announcements");

    let (status, body) = ana.post_message(&announcements, "welcome", "a-1").await;
    assert_eq!(status, 201, "an admin may post in announcements: {body}");

    let changes = all_changes(&bob, &announcements).await;
    assert_eq!(changes.len(), 1, "only the admin's post exists: {changes:?}");
    assert_eq!(changes[0]["content"], "welcome", "members can read announcements");
    server.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_get_errors() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;

    let (status, body) = ana.get_json("/api/channels/1/messages?after=0").await;
    assert_eq!(status, 404, "polling an unknown channel gets 404: {body}");
    assert_error_body(&body, "not_found", "polling an unknown channel");

    let (status, body) = ana.post_message("1", "hello", "n-1").await;
    assert_eq!(status, 404, "posting to an unknown channel gets 404: {body}");
    assert_error_body(&body, "not_found", "posting to an unknown channel");

    let (status, body) = ana.get_json("/api/channels/general/messages").await;
    assert_eq!(status, 400, "a channel id that is not a number gets 400: {body}");
    assert_error_body(&body, "bad_request", "a malformed channel id");

    let (status, body) = ana.post_message("-5", "hello", "n-2").await;
    assert_eq!(status, 400, "a negative channel id gets 400: {body}");
    assert_error_body(&body, "bad_request", "a negative channel id");

    let general = ana.channel_id("general").await;
    let (status, body) = ana.get_json(&format!("/api/channels/{general}/messages?limit=ten")).await;
    assert_eq!(status, 400, "a page size that is not a number gets 400: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("non-negative integer"), "the error says what the value must be: {body}");
    assert!(!message.contains("usize"), "the error names no Rust type: {body}");

    let (status, body) = ana.post_message("+5", "hello", "n-3").await;
    assert_eq!(status, 400, "a channel id with a plus sign gets 400: {body}");
    assert_error_body(&body, "bad_request", "a channel id with a plus sign");

    let response = ana.patch("/api/messages/1").json(&json!({"content": "x"})).send().await.unwrap();
    assert_eq!(response.status(), 404, "editing an unknown message gets 404");
    let body: Value = response.json().await.unwrap();
    assert_error_body(&body, "not_found", "editing an unknown message");

    let response = ana.delete("/api/messages/abc").send().await.unwrap();
    assert_eq!(response.status(), 400, "deleting a malformed message id gets 400");
    let body: Value = response.json().await.unwrap();
    assert_error_body(&body, "bad_request", "deleting a malformed id");
    server.stop().await;
}

#[tokio::test]
async fn polling_pages_never_skip_or_repeat() {
    // A window of 100 keeps the newest changes in memory and the rest only
    // on disk, so pages cross the boundary between the two.
    let server = TestServer::start_with(|args| args.history_cache = 100).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let mut ws = ana.connect(&server).await;
    let sent = send_pipelined(&mut ws, &general, 250, "page").await;
    let sent_ids: Vec<u64> = sent.iter().map(|(_, id)| *id).collect();
    assert!(sent_ids.windows(2).all(|pair| pair[0] < pair[1]), "ids increase in send order");

    // Edits move a message to a new rev at the end of the change order: one
    // that is only on disk, one near the window's edge and one in the window.
    let mut edited = Vec::new();
    for index in [10, 150, 240] {
        let id = sent_ids[index];
        let response = ana
            .patch(&format!("/api/messages/{id}"))
            .json(&json!({"content": format!("edited {index}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "editing message {index} succeeds");
        let body: Value = response.json().await.unwrap();
        edited.push((id, number(&body["message"]["rev"])));
    }
    let edited_ids: HashSet<u64> = edited.iter().map(|(id, _)| *id).collect();
    let mut expected: Vec<u64> = sent_ids.iter().copied().filter(|id| !edited_ids.contains(id)).collect();
    expected.extend(edited.iter().map(|(id, _)| *id));

    for limit in [7usize, 50, 200] {
        let mut collected: Vec<Value> = Vec::new();
        let mut after = 0;
        let mut finished = false;
        for _ in 0..(250 / limit + 5) {
            let (status, body) = ana
                .get_json(&format!("/api/channels/{general}/messages?after={after}&limit={limit}"))
                .await;
            assert_eq!(status, 200, "limit {limit}: polling after={after} succeeds: {body}");
            let page = body["messages"].as_array().unwrap().clone();
            assert!(page.len() <= limit, "limit {limit}: a page has at most {limit} messages, found {}", page.len());
            if let Some(last) = page.last() {
                after = number(&last["rev"]);
            }
            let has_more = body["has_more"] == true;
            assert!(!has_more || page.len() == limit, "limit {limit}: a page with more after it is full");
            collected.extend(page);
            if !has_more {
                finished = true;
                break;
            }
        }
        assert!(finished, "limit {limit}: paging reached a page with has_more false");

        let collected_revs = revs(&collected);
        assert!(
            collected_revs.windows(2).all(|pair| pair[0] < pair[1]),
            "limit {limit}: changes arrive in increasing rev order"
        );
        assert_eq!(
            ids(&Value::Array(collected.clone())),
            expected,
            "limit {limit}: every message appears exactly once, in rev order"
        );
        for (id, rev) in &edited {
            let message = collected.iter().find(|m| number(&m["id"]) == *id).unwrap();
            assert_eq!(number(&message["rev"]), *rev, "limit {limit}: edited message {id} appears at its new rev");
            assert!(
                message["content"].as_str().unwrap().starts_with("edited"),
                "limit {limit}: edited message {id} has its new content"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn history_pages_backwards_without_gaps() {
    let server = TestServer::start_with(|args| args.history_cache = 100).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let mut ws = ana.connect(&server).await;
    let sent = send_pipelined(&mut ws, &general, 250, "back").await;
    let sent_ids: Vec<u64> = sent.iter().map(|(_, id)| *id).collect();

    for limit in [7usize, 50, 200] {
        let mut pages: Vec<Vec<u64>> = Vec::new();
        let mut path = format!("/api/channels/{general}/messages?limit={limit}");
        let mut finished = false;
        for _ in 0..(250 / limit + 5) {
            let (status, body) = ana.get_json(&path).await;
            assert_eq!(status, 200, "limit {limit}: {path} succeeds: {body}");
            let page = ids(&body["messages"]);
            assert!(page.len() <= limit, "limit {limit}: a page has at most {limit} messages, found {}", page.len());
            assert!(
                page.windows(2).all(|pair| pair[0] < pair[1]),
                "limit {limit}: each page is oldest first: {page:?}"
            );
            let has_more = body["has_more"] == true;
            let Some(&oldest) = page.first() else {
                assert!(!has_more, "limit {limit}: an empty page has nothing before it");
                finished = true;
                break;
            };
            pages.push(page);
            if !has_more {
                finished = true;
                break;
            }
            path = format!("/api/channels/{general}/messages?before={oldest}&limit={limit}");
        }
        assert!(finished, "limit {limit}: paging back reached a page with has_more false");

        let collected: Vec<u64> = pages.into_iter().rev().flatten().collect();
        assert_eq!(collected, sent_ids, "limit {limit}: paging back returns every message exactly once");
    }
    server.stop().await;
}

#[tokio::test]
async fn long_poll_returns_new_message() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;
    let general = ana.channel_id("general").await;

    let (_, body) = ana.post_message(&general, "first", "n-1").await;
    let latest = number(&body["message"]["rev"]);

    let poll = tokio::spawn({
        let bob = bob.clone();
        let path = format!("/api/channels/{general}/messages?after={latest}&wait=10");
        async move { bob.get_json(&path).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, sent) = ana.post_message(&general, "wake up", "n-2").await;
    assert_eq!(status, 201, "the second message is sent: {sent}");

    let (status, body) = poll.await.expect("the long poll task did not panic");
    assert_eq!(status, 200, "the long poll succeeds: {body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "the long poll returns exactly the new message: {body}");
    assert_eq!(messages[0]["id"], sent["message"]["id"], "the long poll returns the new message's id");
    assert_eq!(messages[0]["content"], "wake up", "the long poll returns the new content");
    server.stop().await;
}

#[tokio::test]
async fn long_poll_rejects_long_wait() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let (status, body) = ana.get_json(&format!("/api/channels/{general}/messages?after=0&wait=31")).await;
    assert_eq!(status, 400, "wait over 30 seconds gets 400: {body}");
    assert_error_body(&body, "bad_request", "wait=31");

    let (status, body) = ana.get_json(&format!("/api/channels/{general}/messages?after=0&wait=1")).await;
    assert_eq!(status, 200, "a long poll with nothing new ends with 200: {body}");
    assert_eq!(body["messages"], json!([]), "a long poll with nothing new returns no messages: {body}");
    server.stop().await;
}

#[tokio::test]
async fn author_edits_own_message() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;
    let general = ana.channel_id("general").await;

    let (_, body) = bob.post_message(&general, "helo", "b-1").await;
    let id = number(&body["message"]["id"]);
    let old_rev = number(&body["message"]["rev"]);

    let response = bob
        .patch(&format!("/api/messages/{id}"))
        .json(&json!({"content": "  hello  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the author may edit");
    let edited: Value = response.json().await.unwrap();
    assert_eq!(edited["message"]["content"], "hello", "the edit returns the new, trimmed content: {edited}");
    assert!(edited["message"]["edited_ts"].as_u64().is_some(), "the edit sets edited_ts: {edited}");
    assert!(number(&edited["message"]["rev"]) > old_rev, "the edit takes a greater rev: {edited}");
    assert_eq!(number(&edited["message"]["id"]), id, "the edit keeps the id: {edited}");

    let response = ana
        .patch(&format!("/api/messages/{id}"))
        .json(&json!({"content": "hijacked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "another user, even an admin, may not edit");
    let body: Value = response.json().await.unwrap();
    assert_error_body(&body, "forbidden", "editing another user's message");

    let response = bob
        .patch(&format!("/api/messages/{id}"))
        .json(&json!({"content": "   "}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "an edit to whitespace-only content gets 400");

    let changes = all_changes(&bob, &general).await;
    assert_eq!(changes.len(), 1, "the channel holds one message: {changes:?}");
    assert_eq!(changes[0]["content"], "hello", "the stored content is the author's edit");
    server.stop().await;
}

#[tokio::test]
async fn delete_leaves_tombstone() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let bob = Client::member(&server, "bob").await;
    let cleo = Client::member(&server, "cleo").await;
    let general = ana.channel_id("general").await;

    let (_, body) = bob.post_message(&general, "to be deleted", "b-1").await;
    let own = number(&body["message"]["id"]);
    let (_, body) = bob.post_message(&general, "moderated", "b-2").await;
    let moderated = number(&body["message"]["id"]);
    let before_deletes = number(&body["message"]["rev"]);

    let response = cleo.delete(&format!("/api/messages/{own}")).send().await.unwrap();
    assert_eq!(response.status(), 403, "another member may not delete");
    let body: Value = response.json().await.unwrap();
    assert_error_body(&body, "forbidden", "a member deleting another's message");

    let response = bob.delete(&format!("/api/messages/{own}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the author may delete");
    let deleted: Value = response.json().await.unwrap();
    let tombstone = &deleted["message"];
    let tombstone_rev = number(&tombstone["rev"]);
    assert_eq!(
        *tombstone,
        json!({"id": own.to_string(), "channel": general, "rev": tombstone_rev.to_string(), "deleted": true}),
        "the delete returns a tombstone without content"
    );
    assert!(tombstone_rev > before_deletes, "the delete takes a new rev");

    let response = ana.delete(&format!("/api/messages/{moderated}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "an admin may delete another user's message");

    let (status, body) = bob
        .get_json(&format!("/api/channels/{general}/messages?after={before_deletes}"))
        .await;
    assert_eq!(status, 200, "polling after the deletes succeeds: {body}");
    let changes = body["messages"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "both deletes appear as changes: {body}");
    assert_eq!(changes[0], *tombstone, "the author's delete appears as the tombstone");
    assert_eq!(changes[1]["id"], moderated.to_string(), "the admin's delete appears second");
    assert_eq!(changes[1]["deleted"], true, "the admin's delete is a tombstone: {body}");
    assert!(changes[1].get("content").is_none(), "a tombstone carries no content: {body}");

    let (status, body) = bob.get_json(&format!("/api/channels/{general}/messages")).await;
    assert_eq!(status, 200, "the newest page loads: {body}");
    assert_eq!(body["messages"], json!([]), "deleted messages leave the newest page: {body}");
    server.stop().await;
}

#[tokio::test]
async fn healthz_reports_ok() {
    let server = TestServer::start().await;
    let response = http().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET /healthz gets 200");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}), "GET /healthz returns status ok");
    server.stop().await;
}

#[tokio::test]
async fn index_page_has_security_headers() {
    let server = TestServer::start().await;
    let response = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET / gets 200");

    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    let policy = header("content-security-policy");
    let nosniff = header("x-content-type-options");
    assert!(content_type.starts_with("text/html"), "GET / serves HTML, found {content_type:?}");
    assert!(policy.contains("script-src 'self'"), "the CSP limits scripts to this origin: {policy:?}");
    assert_eq!(nosniff, "nosniff", "X-Content-Type-Options is nosniff");

    let html = response.text().await.unwrap();
    assert!(html.to_ascii_lowercase().contains("<html"), "the body is an HTML page");
    server.stop().await;
}

#[tokio::test]
async fn oversized_body_is_rejected() {
    let server = TestServer::start_with(|args| {
        args.max_frame_bytes = 1024;
        args.max_message_chars = 10_000;
    })
    .await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let (status, body) = ana.post_message(&general, &"a".repeat(2000), "n-big").await;
    assert_eq!(status, 413, "a body over --max-frame-bytes gets 413: {body}");
    assert_error_body(&body, "too_large", "a body over --max-frame-bytes");

    let (status, body) = ana.post_message(&general, &"a".repeat(500), "n-fits").await;
    assert_eq!(status, 201, "a body under --max-frame-bytes is accepted: {body}");

    let changes = all_changes(&ana, &general).await;
    assert_eq!(changes.len(), 1, "only the body within the limit created a message: {changes:?}");
    server.stop().await;
}

#[tokio::test]
async fn declared_oversize_body_is_refused_at_once() {
    let server = TestServer::start_with(|args| args.body_read_timeout_ms = 60_000).await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    // Only the head is sent: a server that waited for the body would answer
    // after the 60 s body timeout, long after this test's timeout.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/channels/{general}/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n",
        server.addr, ana.token
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 512];
    let read = tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read(&mut stream, &mut response))
        .await
        .expect("the server answers before the body arrives")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "a declared length over the limit gets 413: {text}");
    server.stop().await;
}

#[tokio::test]
async fn http10_upgrade_gets_400() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr, ana.token
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 1024];
    let read = tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read(&mut stream, &mut response))
        .await
        .expect("the server answers the upgrade request")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.0 400") || text.starts_with("HTTP/1.1 400"), "an HTTP/1.0 upgrade gets 400: {text}");
    assert!(text.contains("HTTP/1.1"), "the error says which version is required: {text}");
    server.stop().await;
}
