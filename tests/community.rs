//! Community structure tests against the real server. They cover who may
//! read and post where (role × tier × min_tier × post × hidden) and tier
//! expiry in the middle of a session. They also cover structure changes
//! pushed live, concurrent moves, admin and moderator permissions, mutes,
//! the send rate limit, and disabled or deleted accounts.

mod common;

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Bounds every loop that reads frames: more than any test expects.
const MAX_FRAMES: usize = 10_000;

/// The default tiers, lowest first.
const TIERS: [&str; 3] = ["free", "pro", "elite"];

/// The roles, least privileged first.
const ROLES: [&str; 3] = ["member", "moderator", "admin"];

/// A burst large enough that the send rate limit never applies, for tests
/// that are not about it.
const UNLIMITED_BURST: u32 = 100_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

fn tier_rank(tier: &str) -> usize {
    TIERS.iter().position(|name| *name == tier).expect("a default tier")
}

/// Starts a server whose send rate limit does not interfere.
async fn start_unlimited() -> TestServer {
    TestServer::start_with(|args| args.send_burst = UNLIMITED_BURST).await
}

/// Sends a request and returns the status and the JSON body (null when the
/// body is not JSON).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request completes");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates a category as admin and returns its id.
async fn create_category(admin: &Client, name: &str) -> String {
    let (status, body) = call(admin.post("/api/categories").json(&json!({"name": name}))).await;
    assert_eq!(status, 201, "admin creates category {name}: {body}");
    body["id"].as_str().expect("new category id is a string").to_string()
}

/// Creates a channel as admin and returns its id.
async fn create_channel(admin: &Client, fields: Value) -> String {
    let (status, body) = call(admin.post("/api/channels").json(&fields)).await;
    assert_eq!(status, 201, "admin creates channel {fields}: {body}");
    body["id"].as_str().expect("new channel id is a string").to_string()
}

/// Changes a user as `actor`, expecting success, and returns the user.
async fn patch_user(actor: &Client, id: &str, patch: Value) -> Value {
    let (status, body) = call(actor.patch(&format!("/api/users/{id}")).json(&patch)).await;
    assert_eq!(status, 200, "PATCH /api/users/{id} with {patch}: {body}");
    body["user"].clone()
}

/// Registers `name`, gives it a role and tier, and logs in.
async fn user_with(server: &TestServer, admin: &Client, name: &str, role: &str, tier: &str) -> Client {
    let client = Client::member(server, name).await;
    let user = patch_user(admin, &client.id(), json!({"role": role, "tier": tier})).await;
    assert_eq!(user["role"], role, "{name} has the role that was set");
    assert_eq!(user["tier"], tier, "{name} has the tier that was set");
    client
}

/// Every user as the admin list returns it.
async fn user_list(admin: &Client) -> Value {
    let (status, body) = admin.get_json("/api/users").await;
    assert_eq!(status, 200, "admin lists users: {body}");
    body["users"].clone()
}

/// The layout view that GET /api/layout returns to `client`.
async fn rest_layout(client: &Client) -> Value {
    let (status, layout) = client.get_json("/api/layout").await;
    assert_eq!(status, 200, "GET /api/layout: {layout}");
    layout
}

/// Polls every change of a channel after rev 0; returns status and body.
async fn poll(client: &Client, channel: &str) -> (u16, Value) {
    client.get_json(&format!("/api/channels/{channel}/messages?after=0&limit=200")).await
}

/// Contents of the messages in a poll or history body.
fn contents(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .map(|list| list.iter().filter_map(|message| message["content"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Finds the channel entry with this id in a layout view.
fn find_channel<'a>(layout: &'a Value, id: &str) -> Option<&'a Value> {
    layout["categories"]
        .as_array()?
        .iter()
        .flat_map(|category| category["channels"].as_array().into_iter().flatten())
        .find(|channel| channel["id"] == id)
}

/// Category ids of a layout view, in order.
fn category_ids(layout: &Value) -> Vec<String> {
    layout["categories"]
        .as_array()
        .expect("categories is an array")
        .iter()
        .map(|category| category["id"].as_str().expect("category id").to_string())
        .collect()
}

/// Channel ids of a layout view, category by category.
fn channel_ids(layout: &Value) -> Vec<String> {
    layout["categories"]
        .as_array()
        .expect("categories is an array")
        .iter()
        .flat_map(|category| category["channels"].as_array().expect("channels is an array").iter())
        .map(|channel| channel["id"].as_str().expect("channel id").to_string())
        .collect()
}

/// Channel ids of one category in a layout view, in order.
fn channels_of(layout: &Value, category: &str) -> Vec<String> {
    layout["categories"]
        .as_array()
        .expect("categories is an array")
        .iter()
        .find(|entry| entry["id"] == category)
        .unwrap_or_else(|| panic!("category {category} in layout {layout}"))["channels"]
        .as_array()
        .expect("channels is an array")
        .iter()
        .map(|channel| channel["id"].as_str().expect("channel id").to_string())
        .collect()
}

fn layout_version(layout: &Value) -> u64 {
    layout["version"].as_u64().unwrap_or_else(|| panic!("layout has a numeric version: {layout}"))
}

fn is_message_in(frame: &Value, channel: &str) -> bool {
    frame["op"] == "message" && frame["message"]["channel"] == channel
}

/// Reads frames until `matches` accepts one. Returns the frames before it
/// and that frame.
async fn frames_until(ws: &mut WsClient, what: &str, matches: impl Fn(&Value) -> bool) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    for _ in 0..MAX_FRAMES {
        let frame = ws.recv().await;
        if matches(&frame) {
            return (before, frame);
        }
        before.push(frame);
    }
    panic!("no {what} within {MAX_FRAMES} frames");
}

/// Sends a heartbeat and returns the frames that arrive before its
/// heartbeat_ack, which are the frames the server queued before it.
async fn pending_frames(ws: &mut WsClient) -> Vec<Value> {
    ws.send(json!({"op": "heartbeat"})).await;
    frames_until(ws, "heartbeat_ack", |frame| frame["op"] == "heartbeat_ack").await.0
}

/// Reads frames until `matches` accepts one and returns it.
async fn next_matching(ws: &mut WsClient, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    frames_until(ws, what, matches).await.1
}

/// Subscribes and returns the `subscribed` or `error` reply.
async fn ws_subscribe(ws: &mut WsClient, channel: &str) -> Value {
    ws.send(json!({"op": "subscribe", "channel": channel, "after": null, "limit": 200})).await;
    next_matching(ws, "subscribe reply", |frame| {
        (frame["op"] == "subscribed" && frame["channel"] == channel) || frame["op"] == "error"
    })
    .await
}

/// Requests history and returns the `history` or `error` reply.
async fn ws_history(ws: &mut WsClient, channel: &str) -> Value {
    ws.send(json!({"op": "history", "channel": channel, "limit": 200})).await;
    next_matching(ws, "history reply", |frame| {
        (frame["op"] == "history" && frame["channel"] == channel) || frame["op"] == "error"
    })
    .await
}

/// Sends a message and returns its `ack` or `error` frame.
async fn ws_send(ws: &mut WsClient, channel: &str, content: &str, nonce: &str) -> Value {
    ws.send(json!({"op": "send", "channel": channel, "content": content, "nonce": nonce})).await;
    next_matching(ws, "send reply", |frame| {
        (frame["op"] == "ack" || frame["op"] == "error") && frame["nonce"] == nonce
    })
    .await
}

/// Returns the outcome of a WebSocket reply: its op, or the code of an error.
fn outcome(reply: &Value) -> String {
    if reply["op"] == "error" {
        reply["code"].as_str().unwrap_or("error without code").to_string()
    } else {
        reply["op"].as_str().unwrap_or("frame without op").to_string()
    }
}

/// One channel of the permission matrix.
struct MatrixChannel {
    id: String,
    name: String,
    min_tier: &'static str,
    post: &'static str,
    hidden: bool,
    /// Content of the message the admin posted before any user looked.
    seed: String,
}

#[tokio::test]
async fn permission_matrix_covers_every_path() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin-free").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = category_ids(&layout)[0].clone();

    let mut channels = Vec::new();
    for min_tier in TIERS {
        for post in ["everyone", "admins"] {
            for hidden in [false, true] {
                let name = format!("{min_tier}-{post}-{}", if hidden { "hidden" } else { "shown" });
                let id = create_channel(
                    &admin,
                    json!({"category": category, "name": name, "min_tier": min_tier, "post": post, "hidden": hidden}),
                )
                .await;
                let seed = format!("seed in {name}");
                let (status, body) = admin.post_message(&id, &seed, &format!("seed-{name}")).await;
                assert_eq!(status, 201, "admin seeds {name}: {body}");
                channels.push(MatrixChannel { id, name, min_tier, post, hidden, seed });
            }
        }
    }

    // Contents each channel must hold at the end: the seed plus every send
    // the matrix expects to succeed.
    let mut expected_contents: Vec<HashSet<String>> =
        channels.iter().map(|channel| HashSet::from([channel.seed.clone()])).collect();

    for role in ROLES {
        for tier in TIERS {
            let name = format!("{role}-{tier}");
            let client = if role == "admin" && tier == "free" {
                admin.clone()
            } else {
                user_with(&server, &admin, &name, role, tier).await
            };
            let mut ws = client.connect(&server).await;
            let layout = rest_layout(&client).await;

            for (index, channel) in channels.iter().enumerate() {
                let case = format!("{role} with tier {tier} on channel {}", channel.name);
                let readable = role == "admin" || tier_rank(tier) >= tier_rank(channel.min_tier);
                let may_post = readable && (channel.post == "everyone" || role == "admin");
                let visible = readable || !channel.hidden;

                // The layout view.
                let listed = find_channel(&layout, &channel.id);
                assert_eq!(listed.is_some(), visible, "{case}: GET /api/layout lists the channel: {layout}");
                let listed_on_ready = find_channel(&ws.ready["layout"], &channel.id);
                assert_eq!(listed_on_ready.is_some(), visible, "{case}: the ready frame's layout lists the channel");
                if let Some(entry) = listed {
                    assert_eq!(entry["locked"], json!(!readable), "{case}: locked flag: {entry}");
                    assert_eq!(entry["min_tier"], channel.min_tier, "{case}: min_tier shown: {entry}");
                }

                // Subscribe over WebSocket.
                let reply = ws_subscribe(&mut ws, &channel.id).await;
                if readable {
                    assert_eq!(reply["op"], "subscribed", "{case}: subscribe succeeds: {reply}");
                    assert!(
                        contents(&reply["messages"]).contains(&channel.seed),
                        "{case}: subscribed batch has the seed message: {reply}"
                    );
                } else {
                    assert_eq!(outcome(&reply), "not_found", "{case}: subscribe is not_found: {reply}");
                }

                // History over WebSocket.
                let reply = ws_history(&mut ws, &channel.id).await;
                if readable {
                    assert_eq!(reply["op"], "history", "{case}: history succeeds: {reply}");
                    assert!(
                        contents(&reply["messages"]).contains(&channel.seed),
                        "{case}: history has the seed message: {reply}"
                    );
                } else {
                    assert_eq!(outcome(&reply), "not_found", "{case}: history is not_found: {reply}");
                }

                // HTTP polling.
                let (status, body) = poll(&client, &channel.id).await;
                assert_eq!(status, if readable { 200 } else { 404 }, "{case}: polling status: {body}");
                if readable {
                    assert!(
                        contents(&body["messages"]).contains(&channel.seed),
                        "{case}: polling returns the seed message: {body}"
                    );
                }

                // Sends over WebSocket and HTTP.
                let ws_content = format!("{name} over ws in {}", channel.name);
                let reply = ws_send(&mut ws, &channel.id, &ws_content, &format!("{name}-ws-{index}")).await;
                let expected = match (readable, may_post) {
                    (false, _) => "not_found",
                    (true, false) => "forbidden",
                    (true, true) => "ack",
                };
                assert_eq!(outcome(&reply), expected, "{case}: WebSocket send: {reply}");

                let http_content = format!("{name} over http in {}", channel.name);
                let (status, body) = client.post_message(&channel.id, &http_content, &format!("{name}-http-{index}")).await;
                let expected_status = match (readable, may_post) {
                    (false, _) => 404,
                    (true, false) => 403,
                    (true, true) => 201,
                };
                assert_eq!(status, expected_status, "{case}: HTTP send: {body}");

                if may_post {
                    expected_contents[index].insert(ws_content);
                    expected_contents[index].insert(http_content);
                }
            }
        }
    }

    for (channel, expected) in channels.iter().zip(&expected_contents) {
        let (status, body) = poll(&admin, &channel.id).await;
        assert_eq!(status, 200, "admin polls {}: {body}", channel.name);
        let stored: HashSet<String> = contents(&body["messages"]).into_iter().collect();
        assert_eq!(&stored, expected, "{} holds exactly the permitted sends", channel.name);
    }
}

/// Collects the responses a member gets for one channel id on every read and write path.
async fn probe_channel(client: &Client, ws: &mut WsClient, channel: &str) -> Vec<(String, Value)> {
    let mut answers = Vec::new();
    let (status, body) = poll(client, channel).await;
    answers.push(("poll after".to_string(), json!({"status": status, "body": body})));
    let (status, body) = client.get_json(&format!("/api/channels/{channel}/messages")).await;
    answers.push(("newest page".to_string(), json!({"status": status, "body": body})));
    let (status, body) = client
        .get_json(&format!("/api/channels/{channel}/messages?after=0&wait=1"))
        .await;
    answers.push(("long poll".to_string(), json!({"status": status, "body": body})));
    let (status, body) = client.post_message(channel, "probe", &format!("probe-{channel}")).await;
    answers.push(("HTTP send".to_string(), json!({"status": status, "body": body})));

    let reply = ws_subscribe(ws, channel).await;
    answers.push(("subscribe".to_string(), reply));
    let reply = ws_history(ws, channel).await;
    answers.push(("history".to_string(), reply));
    let mut reply = ws_send(ws, channel, "probe", &format!("ws-probe-{channel}")).await;
    // The nonce differs by construction; everything else must match.
    reply["nonce"] = Value::Null;
    answers.push(("WebSocket send".to_string(), reply));
    answers
}

#[tokio::test]
async fn forbidden_channel_looks_like_unknown() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = category_ids(&layout)[0].clone();
    let pro = create_channel(&admin, json!({"category": category, "name": "pro-room", "min_tier": "pro"})).await;
    let secret = create_channel(
        &admin,
        json!({"category": category, "name": "secret", "min_tier": "elite", "hidden": true}),
    )
    .await;
    let (status, pro_message) = admin.post_message(&pro, "pro only", "pro-1").await;
    assert_eq!(status, 201, "admin posts in the pro channel");
    let pro_message_id = pro_message["message"]["id"].as_str().unwrap().to_string();
    let (status, _) = admin.post_message(&secret, "secret only", "secret-1").await;
    assert_eq!(status, 201, "admin posts in the hidden channel");

    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;
    let unknown = probe_channel(&member, &mut ws, "123456789").await;
    for (label, channel) in [("pro channel", &pro), ("hidden elite channel", &secret)] {
        let answers = probe_channel(&member, &mut ws, channel).await;
        for ((path, forbidden), (_, missing)) in answers.iter().zip(&unknown) {
            assert_eq!(forbidden, missing, "{path} on the {label} answers like an unknown channel");
        }
    }

    // A guessed message id in a channel the user may not read.
    let moderator = user_with(&server, &admin, "moderator", "moderator", "free").await;
    let (forbidden_status, forbidden_body) = call(moderator.delete(&format!("/api/messages/{pro_message_id}"))).await;
    let (missing_status, missing_body) = call(moderator.delete("/api/messages/123456789")).await;
    assert_eq!(forbidden_status, 404, "deleting a message in an unreadable channel is 404: {forbidden_body}");
    assert_eq!(forbidden_body, missing_body, "that 404 matches the one for an unknown message");
    assert_eq!(missing_status, 404, "deleting an unknown message is 404");
    let (status, body) = call(
        member
            .patch(&format!("/api/messages/{pro_message_id}"))
            .json(&json!({"content": "changed"})),
    )
    .await;
    assert_eq!(status, 404, "editing a message in an unreadable channel is 404: {body}");
    assert_eq!(body, missing_body, "that 404 matches the one for an unknown message");
    let (_, body) = poll(&admin, &pro).await;
    assert_eq!(contents(&body["messages"]), vec!["pro only"], "the probes changed nothing in the pro channel");
}

#[tokio::test]
async fn tier_expiry_ends_access_mid_session() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let general = admin.channel_id("general").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = category_ids(&layout)[0].clone();
    let pro = create_channel(&admin, json!({"category": category, "name": "pro-room", "min_tier": "pro"})).await;

    let user = user_with(&server, &admin, "trader", "member", "pro").await;
    let mut ws = user.connect(&server).await;
    let reply = ws_subscribe(&mut ws, &pro).await;
    assert_eq!(reply["op"], "subscribed", "a pro user subscribes to the pro channel: {reply}");
    let reply = ws_subscribe(&mut ws, &general).await;
    assert_eq!(reply["op"], "subscribed", "the user subscribes to general: {reply}");

    // A long poll that is waiting when the tier ends, woken by a later message.
    let long_poll = tokio::spawn({
        let user = user.clone();
        let pro = pro.clone();
        async move { user.get_json(&format!("/api/channels/{pro}/messages?after=0&wait=20")).await }
    });

    let expires_at = now_ms() + 1500;
    patch_user(&admin, &user.id(), json!({"tier_expires_at": expires_at})).await;

    // The expiry pushes three frames; they may come in any order.
    let mut unsubscribed = None;
    let mut downgraded = None;
    let mut locked_layout = None;
    for _ in 0..MAX_FRAMES {
        if unsubscribed.is_some() && downgraded.is_some() && locked_layout.is_some() {
            break;
        }
        let frame = ws.recv().await;
        if frame["op"] == "unsubscribed" && frame["channel"] == pro {
            unsubscribed = Some(frame);
        } else if frame["op"] == "user" && frame["user"]["tier"] == "free" {
            downgraded = Some(frame);
        } else if frame["op"] == "layout"
            && find_channel(&frame["layout"], &pro).is_some_and(|channel| channel["locked"] == true)
        {
            locked_layout = Some(frame);
        }
    }
    let unsubscribed = unsubscribed.expect("an unsubscribed frame for the pro channel arrives");
    assert_eq!(unsubscribed["reason"], "forbidden", "the subscription ends as forbidden: {unsubscribed}");
    let downgraded = downgraded.expect("a user frame with tier free arrives");
    assert_eq!(downgraded["user"]["tier_expires_at"], Value::Null, "the expired tier has no expiry left: {downgraded}");
    assert!(locked_layout.is_some(), "a layout frame shows the pro channel locked");

    let (status, _) = admin.post_message(&pro, "after expiry", "after-expiry").await;
    assert_eq!(status, 201, "admin posts in the pro channel");
    let (status, _) = admin.post_message(&general, "marker", "marker").await;
    assert_eq!(status, 201, "admin posts the marker in general");
    let (before, _) = frames_until(&mut ws, "the marker in general", |frame| {
        is_message_in(frame, &general) && frame["message"]["content"] == "marker"
    })
    .await;
    assert!(
        !before.iter().any(|frame| is_message_in(frame, &pro)),
        "no pro channel message reaches the downgraded user: {before:?}"
    );

    let (status, body) = tokio::time::timeout(TIMEOUT * 2, long_poll)
        .await
        .expect("the long poll ends")
        .expect("the long poll task did not panic");
    assert!(
        !contents(&body["messages"]).contains(&"after expiry".to_string()),
        "a long poll from before the expiry does not return the later message: {body}"
    );
    assert_eq!(status, 404, "the waiting long poll ends with 404: {body}");
    let (status, body) = poll(&user, &pro).await;
    assert_eq!(status, 404, "polling the pro channel after expiry is 404: {body}");
    let reply = ws_history(&mut ws, &pro).await;
    assert_eq!(outcome(&reply), "not_found", "history of the pro channel after expiry is not_found: {reply}");
    let (_, me) = user.get_json("/api/me").await;
    assert_eq!(me["user"]["tier"], "free", "GET /api/me shows the first tier: {me}");
}

/// Starts a server with an admin, a free member subscribed to a new free
/// channel "lounge" and to general. Returns the server, admin, member, the
/// member's socket and the ids of lounge and general.
async fn member_in_lounge() -> (TestServer, Client, Client, WsClient, String, String) {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let general = admin.channel_id("general").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = category_ids(&layout)[0].clone();
    let lounge = create_channel(&admin, json!({"category": category, "name": "lounge"})).await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;
    for channel in [&lounge, &general] {
        let reply = ws_subscribe(&mut ws, channel).await;
        assert_eq!(reply["op"], "subscribed", "the member subscribes to {channel}: {reply}");
    }
    (server, admin, member, ws, lounge, general)
}

#[tokio::test]
async fn raised_min_tier_ends_subscription() {
    let (_server, admin, member, mut ws, lounge, general) = member_in_lounge().await;
    let (status, body) = call(admin.patch(&format!("/api/channels/{lounge}")).json(&json!({"min_tier": "pro"}))).await;
    assert_eq!(status, 200, "admin raises the lounge's min_tier: {body}");

    let (mut frames, frame) = frames_until(&mut ws, "unsubscribed frame", |frame| frame["op"] == "unsubscribed").await;
    assert_eq!(frame["channel"], lounge, "the lounge subscription ends: {frame}");
    assert_eq!(frame["reason"], "forbidden", "the reason is forbidden: {frame}");

    admin.post_message(&lounge, "for pro only", "pro-only").await;
    admin.post_message(&general, "marker", "marker").await;
    let (before, _) = frames_until(&mut ws, "the marker", |frame| {
        is_message_in(frame, &general) && frame["message"]["content"] == "marker"
    })
    .await;
    assert!(!before.iter().any(|frame| is_message_in(frame, &lounge)), "no lounge message reaches the member");
    frames.extend(before);
    let layout = frames.iter().rev().find(|frame| frame["op"] == "layout").expect("a layout frame arrived");
    let entry = find_channel(&layout["layout"], &lounge).expect("the lounge stays listed, locked");
    assert_eq!(entry["locked"], true, "the lounge is locked for the member: {entry}");
    let (status, _) = poll(&member, &lounge).await;
    assert_eq!(status, 404, "polling the lounge is 404 for the member");
}

#[tokio::test]
async fn hidden_locked_channel_leaves_layout() {
    let (_server, admin, member, mut ws, lounge, _general) = member_in_lounge().await;
    let patch = json!({"min_tier": "elite", "hidden": true});
    let (status, body) = call(admin.patch(&format!("/api/channels/{lounge}")).json(&patch)).await;
    assert_eq!(status, 200, "admin hides the lounge behind elite: {body}");

    let (mut frames, frame) = frames_until(&mut ws, "unsubscribed frame", |frame| frame["op"] == "unsubscribed").await;
    assert_eq!(frame["channel"], lounge, "the lounge subscription ends: {frame}");
    assert_eq!(frame["reason"], "forbidden", "the reason is forbidden: {frame}");
    frames.extend(pending_frames(&mut ws).await);
    let layout = frames.iter().rev().find(|frame| frame["op"] == "layout").expect("a layout frame arrived");
    assert!(find_channel(&layout["layout"], &lounge).is_none(), "the hidden lounge leaves the member's layout: {layout}");
    let rest = rest_layout(&member).await;
    assert!(find_channel(&rest, &lounge).is_none(), "GET /api/layout does not list it either: {rest}");
    let (status, _) = poll(&member, &lounge).await;
    assert_eq!(status, 404, "polling the hidden lounge is 404");
}

#[tokio::test]
async fn hiding_readable_channel_keeps_subscription() {
    let (_server, admin, _member, mut ws, lounge, _general) = member_in_lounge().await;
    let (status, body) = call(admin.patch(&format!("/api/channels/{lounge}")).json(&json!({"hidden": true}))).await;
    assert_eq!(status, 200, "admin hides the free lounge: {body}");
    let (status, _) = admin.post_message(&lounge, "still here", "still-here").await;
    assert_eq!(status, 201, "admin posts in the lounge");

    let (before, _) = frames_until(&mut ws, "the lounge message", |frame| is_message_in(frame, &lounge)).await;
    assert!(
        !before.iter().any(|frame| frame["op"] == "unsubscribed"),
        "a channel the member may still read keeps its subscription: {before:?}"
    );
    let layout = before.iter().rev().find(|frame| frame["op"] == "layout").expect("a layout frame arrived");
    let entry = find_channel(&layout["layout"], &lounge).expect("the readable hidden lounge stays listed");
    assert_eq!(entry["locked"], false, "the lounge is not locked: {entry}");
}

#[tokio::test]
async fn deleted_channel_loses_messages() {
    let (server, admin, member, mut ws, lounge, general) = member_in_lounge().await;
    for index in 0..3 {
        let (status, _) = admin.post_message(&lounge, &format!("lounge {index}"), &format!("lounge-{index}")).await;
        assert_eq!(status, 201, "admin posts lounge message {index}");
    }
    for index in 0..2 {
        let (status, _) = admin.post_message(&general, &format!("general {index}"), &format!("general-{index}")).await;
        assert_eq!(status, 201, "admin posts general message {index}");
    }
    let (_, lounge_page) = poll(&admin, &lounge).await;
    let lounge_ids = ids(&lounge_page["messages"]);

    let (status, body) = call(admin.delete(&format!("/api/channels/{lounge}"))).await;
    assert_eq!(status, 200, "admin deletes the lounge: {body}");
    let frame = next_matching(&mut ws, "unsubscribed frame", |frame| frame["op"] == "unsubscribed").await;
    assert_eq!(frame["channel"], lounge, "the lounge subscription ends: {frame}");
    assert_eq!(frame["reason"], "deleted", "the reason is deleted: {frame}");
    let (status, _) = poll(&admin, &lounge).await;
    assert_eq!(status, 404, "even an admin gets 404 on the deleted channel");
    let (status, _) = poll(&member, &lounge).await;
    assert_eq!(status, 404, "the member gets 404 on the deleted channel");

    // The database holds only the other channels' messages.
    let dir = server.stop().await;
    {
        let store = aura::store::Store::open(dir.path(), 8 << 20).expect("the stopped server's database opens");
        let (stored, _) = store.counts();
        assert_eq!(stored, 2, "only the two general messages remain in the database");
        let lounge_left = store
            .changes_forward(lounge.parse().unwrap(), 0, u64::MAX, 1000, |_| false)
            .expect("scan of the deleted channel");
        assert!(lounge_left.is_empty(), "no change of the deleted channel remains: {lounge_left:?}");
        for id in &lounge_ids {
            let channel = store.message_channel(*id).expect("channel index reads");
            assert_eq!(channel, None, "message {id} of the deleted channel left the channel index");
        }
    }

    let server = TestServer::start_in(dir, |_| {}).await;
    let admin = Client::login(&server, "admin").await;
    let (status, body) = poll(&admin, &general).await;
    assert_eq!(status, 200, "general polls after the restart");
    assert_eq!(contents(&body["messages"]), vec!["general 0", "general 1"], "general keeps its messages");
    let (status, _) = poll(&admin, &lounge).await;
    assert_eq!(status, 404, "the deleted channel is still 404 after the restart");
}

#[tokio::test]
async fn nonempty_category_delete_conflicts() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let before = rest_layout(&admin).await;
    let community = category_ids(&before)[0].clone();

    let (status, body) = call(admin.delete(&format!("/api/categories/{community}"))).await;
    assert_eq!(status, 409, "deleting a category with channels is a conflict: {body}");
    assert_eq!(body["error"]["code"], "conflict", "the error code is conflict: {body}");
    assert_eq!(rest_layout(&admin).await, before, "the rejected delete changed nothing");
}

#[tokio::test]
async fn category_changes_push_new_versions() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let mut admin_ws = admin.connect(&server).await;
    let mut member_ws = member.connect(&server).await;
    let start = layout_version(&member_ws.ready["layout"]);

    let created = create_category(&admin, "Trading").await;
    let (status, body) = call(admin.patch(&format!("/api/categories/{created}")).json(&json!({"name": "Markets"}))).await;
    assert_eq!(status, 200, "admin renames the category: {body}");
    let (status, body) = call(admin.delete(&format!("/api/categories/{created}"))).await;
    assert_eq!(status, 200, "admin deletes the empty category: {body}");

    for (label, ws) in [("admin", &mut admin_ws), ("member", &mut member_ws)] {
        let mut layouts = Vec::new();
        for _ in 0..3 {
            let frame = next_matching(ws, "layout frame", |frame| frame["op"] == "layout").await;
            layouts.push(frame["layout"].clone());
        }
        let versions: Vec<u64> = layouts.iter().map(layout_version).collect();
        assert_eq!(versions, vec![start + 1, start + 2, start + 3], "{label} gets one new version per change");
        let names = |layout: &Value| -> Vec<String> {
            layout["categories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|category| category["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(names(&layouts[0]).contains(&"Trading".to_string()), "{label} sees the new category: {}", layouts[0]);
        assert!(names(&layouts[1]).contains(&"Markets".to_string()), "{label} sees the new name: {}", layouts[1]);
        assert!(!category_ids(&layouts[2]).contains(&created), "{label} sees the category gone: {}", layouts[2]);
    }
}

/// A small deterministic generator, so a failing round can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// A WebSocket client that follows layout changes.
struct Watcher<'a> {
    label: &'static str,
    client: &'a Client,
    ws: WsClient,
    /// The newest layout version this socket received.
    seen_version: u64,
    /// The newest layout this socket received.
    last_layout: Value,
}

/// Reads layout frames until one has `version`; checks that the versions
/// seen follow each other without a gap and returns the last layout.
async fn catch_up(ws: &mut WsClient, label: &str, seen: &mut u64, version: u64) -> Value {
    for _ in 0..MAX_FRAMES {
        let frame = next_matching(ws, "layout frame", |frame| frame["op"] == "layout").await;
        let got = layout_version(&frame["layout"]);
        assert_eq!(got, *seen + 1, "{label} receives every layout version in order");
        *seen = got;
        if got == version {
            return frame["layout"].clone();
        }
    }
    panic!("{label} did not reach layout version {version}");
}

#[tokio::test]
async fn concurrent_moves_converge() {
    let server = start_unlimited().await;
    let admin_a = Client::admin(&server, "admin-a").await;
    let admin_b = user_with(&server, &admin_a, "admin-b", "admin", "free").await;
    let member = Client::member(&server, "member").await;
    let pro_member = user_with(&server, &admin_a, "pro-member", "member", "pro").await;

    let initial = rest_layout(&admin_a).await;
    let mut categories = category_ids(&initial);
    let mut channels = channel_ids(&initial);
    for category_index in 0..3 {
        let category = create_category(&admin_a, &format!("category {category_index}")).await;
        for channel_index in 0..3 {
            let gate = match channel_index {
                0 => json!({"min_tier": "pro"}),
                1 => json!({"min_tier": "elite", "hidden": true}),
                _ => json!({}),
            };
            let mut fields = json!({"category": category, "name": format!("room {category_index}.{channel_index}")});
            fields.as_object_mut().unwrap().extend(gate.as_object().unwrap().clone());
            channels.push(create_channel(&admin_a, fields).await);
        }
        categories.push(category);
    }

    let watchers = [("admin a", &admin_a), ("admin b", &admin_b), ("member", &member), ("pro member", &pro_member)];
    let mut sockets = Vec::new();
    for (label, client) in watchers {
        let ws = client.connect(&server).await;
        let last_layout = ws.ready["layout"].clone();
        let seen_version = layout_version(&last_layout);
        sockets.push(Watcher { label, client, ws, seen_version, last_layout });
    }
    let start = layout_version(&rest_layout(&admin_a).await);

    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..50 {
        let moved = channels[random.below(channels.len())].clone();
        let target = categories[random.below(categories.len())].clone();
        let index = random.below(5);
        let move_a = json!({"kind": "channel", "id": moved, "to_category": target, "index": index});
        let move_b = if round % 2 == 0 {
            json!({"kind": "category", "id": categories[random.below(categories.len())], "index": random.below(5)})
        } else {
            let others: Vec<&String> = channels.iter().filter(|id| **id != moved).collect();
            let other = others[random.below(others.len())];
            json!({"kind": "channel", "id": other, "to_category": categories[random.below(categories.len())], "index": random.below(5)})
        };

        let ((status_a, body_a), (status_b, body_b)) = tokio::join!(
            call(admin_a.post("/api/layout/move").json(&move_a)),
            call(admin_b.post("/api/layout/move").json(&move_b)),
        );
        assert_eq!(status_a, 200, "round {round}: move {move_a} succeeds: {body_a}");
        assert_eq!(status_b, 200, "round {round}: move {move_b} succeeds: {body_b}");

        // Both moves took effect, whichever ran first.
        let layout = rest_layout(&admin_a).await;
        let in_target = channels_of(&layout, &target);
        if move_b["kind"] == "category" {
            let expected_index = index.min(in_target.len() - 1);
            assert_eq!(
                in_target.get(expected_index),
                Some(&moved),
                "round {round}: channel {moved} is at index {expected_index} of {target}: {layout}"
            );
            let order = category_ids(&layout);
            let category_b = move_b["id"].as_str().unwrap();
            let expected_index = (move_b["index"].as_u64().unwrap() as usize).min(order.len() - 1);
            assert_eq!(order[expected_index], category_b, "round {round}: category {category_b} is at index {expected_index}");
        } else {
            assert!(in_target.contains(&moved), "round {round}: channel {moved} is in {target}: {layout}");
            let other = move_b["id"].as_str().unwrap().to_string();
            let other_target = move_b["to_category"].as_str().unwrap();
            assert!(
                channels_of(&layout, other_target).contains(&other),
                "round {round}: channel {other} is in {other_target}: {layout}"
            );
        }

        let version = layout_version(&layout);
        assert_eq!(version, start + 2 * (round as u64 + 1), "round {round}: each move adds one version");
        for watcher in &mut sockets {
            watcher.last_layout = catch_up(&mut watcher.ws, watcher.label, &mut watcher.seen_version, version).await;
        }
    }

    let layout = rest_layout(&admin_a).await;
    let mut listed_channels = channel_ids(&layout);
    let mut listed_categories = category_ids(&layout);
    listed_channels.sort();
    listed_categories.sort();
    channels.sort();
    categories.sort();
    assert_eq!(listed_channels, channels, "every channel exists exactly once after the moves");
    assert_eq!(listed_categories, categories, "every category exists exactly once after the moves");

    for watcher in &mut sockets {
        let label = watcher.label;
        let expected = rest_layout(watcher.client).await;
        assert_eq!(watcher.last_layout, expected, "{label}'s last layout frame equals its GET /api/layout");
        let late = pending_frames(&mut watcher.ws).await;
        assert!(
            !late.iter().any(|frame| frame["op"] == "layout"),
            "{label} receives no layout after the final one: {late:?}"
        );
    }
}

#[tokio::test]
async fn member_admin_endpoints_are_forbidden() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let other = Client::member(&server, "other").await;
    let empty = create_category(&admin, "Empty").await;
    let layout = rest_layout(&admin).await;
    let community = category_ids(&layout)[0].clone();
    let general = admin.channel_id("general").await;
    let users = user_list(&admin).await;

    let other_id = other.id();
    let own_id = member.id();
    let attempts = [
        ("create category", member.post("/api/categories").json(&json!({"name": "Mine"}))),
        ("rename category", member.patch(&format!("/api/categories/{community}")).json(&json!({"name": "Mine"}))),
        ("delete category", member.delete(&format!("/api/categories/{empty}"))),
        ("create channel", member.post("/api/channels").json(&json!({"category": community, "name": "mine"}))),
        ("edit channel", member.patch(&format!("/api/channels/{general}")).json(&json!({"name": "mine"}))),
        ("delete channel", member.delete(&format!("/api/channels/{general}"))),
        (
            "move channel",
            member.post("/api/layout/move").json(&json!({"kind": "channel", "id": general, "index": 1})),
        ),
        (
            "move category",
            member.post("/api/layout/move").json(&json!({"kind": "category", "id": empty, "index": 0})),
        ),
        ("list users", member.get("/api/users")),
        ("set another user's tier", member.patch(&format!("/api/users/{other_id}")).json(&json!({"tier": "elite"}))),
        ("promote self", member.patch(&format!("/api/users/{own_id}")).json(&json!({"role": "admin"}))),
        ("raise own tier", member.patch(&format!("/api/users/{own_id}")).json(&json!({"tier": "elite"}))),
        ("mute another user", member.patch(&format!("/api/users/{other_id}")).json(&json!({"muted_until": now_ms() + 60_000}))),
        ("disable another user", member.patch(&format!("/api/users/{other_id}")).json(&json!({"disabled": true}))),
        ("delete another user", member.delete(&format!("/api/users/{other_id}"))),
        (
            "reset another user's password",
            member
                .post(&format!("/api/users/{other_id}/password"))
                .json(&json!({"password": "another password 123"})),
        ),
    ];
    for (operation, request) in attempts {
        let (status, body) = call(request).await;
        assert_eq!(status, 403, "a member may not {operation}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{operation} returns the forbidden code: {body}");
    }

    assert_eq!(rest_layout(&admin).await, layout, "the layout, version included, is unchanged");
    assert_eq!(user_list(&admin).await, users, "every user is unchanged");
    let response = login_raw(&server, "other", PASSWORD).await;
    assert_eq!(response.status(), 200, "the other user's password still works");
}

#[tokio::test]
async fn moderator_cannot_set_role() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let moderator = user_with(&server, &admin, "moderator", "moderator", "free").await;
    let member = Client::member(&server, "member").await;
    let layout = rest_layout(&admin).await;
    let users = user_list(&admin).await;

    let (member_id, own_id, admin_id) = (member.id(), moderator.id(), admin.id());
    let attempts = [
        ("promote a member", moderator.patch(&format!("/api/users/{member_id}")).json(&json!({"role": "moderator"}))),
        ("promote self", moderator.patch(&format!("/api/users/{own_id}")).json(&json!({"role": "admin"}))),
        ("demote the admin", moderator.patch(&format!("/api/users/{admin_id}")).json(&json!({"role": "member"}))),
        ("set a tier", moderator.patch(&format!("/api/users/{member_id}")).json(&json!({"tier": "elite"}))),
        (
            "mute the admin",
            moderator.patch(&format!("/api/users/{admin_id}")).json(&json!({"muted_until": now_ms() + 60_000})),
        ),
        ("disable a member", moderator.patch(&format!("/api/users/{member_id}")).json(&json!({"disabled": true}))),
        ("delete a member", moderator.delete(&format!("/api/users/{member_id}"))),
        ("create a category", moderator.post("/api/categories").json(&json!({"name": "Mods"}))),
    ];
    for (operation, request) in attempts {
        let (status, body) = call(request).await;
        assert_eq!(status, 403, "a moderator may not {operation}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{operation} returns the forbidden code: {body}");
    }

    assert_eq!(rest_layout(&admin).await, layout, "the layout, version included, is unchanged");
    assert_eq!(user_list(&admin).await, users, "every user is unchanged");
}

#[tokio::test]
async fn moderator_deletes_message_and_mutes() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let moderator = user_with(&server, &admin, "moderator", "moderator", "free").await;
    let member = Client::member(&server, "member").await;
    let general = admin.channel_id("general").await;
    let mut member_ws = member.connect(&server).await;
    let reply = ws_subscribe(&mut member_ws, &general).await;
    assert_eq!(reply["op"], "subscribed", "the member subscribes to general: {reply}");

    // Delete another user's message.
    let ack = member_ws.send_message(&general, "spam", "spam-1").await;
    let spam_id = ack["id"].as_str().unwrap().to_string();
    let (status, body) = call(moderator.delete(&format!("/api/messages/{spam_id}"))).await;
    assert_eq!(status, 200, "the moderator deletes the member's message: {body}");
    let tombstone = next_matching(&mut member_ws, "tombstone", |frame| {
        frame["op"] == "message" && frame["message"]["id"] == spam_id.as_str() && frame["message"]["deleted"] == true
    })
    .await;
    assert_eq!(tombstone["message"].get("content"), None, "the tombstone carries no content: {tombstone}");

    // Mute.
    let until = now_ms() + 3_600_000;
    let user = patch_user(&moderator, &member.id(), json!({"muted_until": until})).await;
    assert_eq!(user["muted_until"], until, "the mute is stored: {user}");
    let frame = next_matching(&mut member_ws, "user frame", |frame| frame["op"] == "user").await;
    assert_eq!(frame["user"]["muted_until"], until, "the member's socket learns of the mute: {frame}");

    let reply = ws_send(&mut member_ws, &general, "muted words", "muted-ws").await;
    assert_eq!(outcome(&reply), "forbidden", "a muted member's WebSocket send is forbidden: {reply}");
    let (status, body) = member.post_message(&general, "muted words", "muted-http").await;
    assert_eq!(status, 403, "a muted member's HTTP send is forbidden: {body}");
    let (status, body) = poll(&member, &general).await;
    assert_eq!(status, 200, "a muted member still reads by polling: {body}");
    assert!(!contents(&body["messages"]).contains(&"muted words".to_string()), "nothing muted was stored: {body}");
    let reply = ws_history(&mut member_ws, &general).await;
    assert_eq!(reply["op"], "history", "a muted member still reads history: {reply}");
    let (status, _) = admin.post_message(&general, "admin speaks", "admin-speaks").await;
    assert_eq!(status, 201, "admin posts while the member is muted");
    next_matching(&mut member_ws, "admin message", |frame| {
        is_message_in(frame, &general) && frame["message"]["content"] == "admin speaks"
    })
    .await;

    // Unmute.
    let user = patch_user(&moderator, &member.id(), json!({"muted_until": null})).await;
    assert_eq!(user["muted_until"], Value::Null, "the mute is cleared: {user}");
    let reply = ws_send(&mut member_ws, &general, "back again", "unmuted-ws").await;
    assert_eq!(outcome(&reply), "ack", "an unmuted member sends again: {reply}");
    let (status, body) = member.post_message(&general, "back over http", "unmuted-http").await;
    assert_eq!(status, 201, "an unmuted member posts over HTTP again: {body}");
}

#[tokio::test]
async fn send_rate_limit_rejects_overflow() {
    let server = TestServer::start_with(|args| {
        args.send_burst = 3;
        args.send_per_second = 1.0;
    })
    .await;
    let admin = Client::admin(&server, "admin").await;
    let general = admin.channel_id("general").await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    // Four sends in one go, so the bucket cannot refill between them.
    for index in 0..4 {
        ws.send(json!({"op": "send", "channel": general, "content": format!("burst {index}"), "nonce": format!("burst-{index}")}))
            .await;
    }
    // Acks come once a message is durable, so the rejection may overtake them.
    let mut replies = vec![Value::Null; 4];
    for _ in 0..MAX_FRAMES {
        if replies.iter().all(|reply| !reply.is_null()) {
            break;
        }
        let frame = ws.recv().await;
        if frame["op"] != "ack" && frame["op"] != "error" {
            continue;
        }
        let index = replies
            .iter()
            .enumerate()
            .position(|(index, _)| frame["nonce"] == format!("burst-{index}").as_str())
            .unwrap_or_else(|| panic!("reply to an unknown send: {frame}"));
        replies[index] = frame;
    }
    for (index, reply) in replies.iter().take(3).enumerate() {
        assert_eq!(outcome(reply), "ack", "send {index} fits the burst: {reply}");
    }
    let rejected = &replies[3];
    assert_eq!(outcome(rejected), "rate_limited", "the fourth quick send is rate limited: {rejected}");
    let retry_after = rejected["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(retry_after > 0, "the rejection says when to retry: {rejected}");

    let response = member
        .post(&format!("/api/channels/{general}/messages"))
        .json(&json!({"content": "over http", "nonce": "http-overflow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "an HTTP send over the limit is 429");
    let retry_header: u64 = response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_header >= 1, "Retry-After is at least one second");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "the HTTP error code is rate_limited: {body}");

    let (_, page) = poll(&admin, &general).await;
    assert_eq!(
        contents(&page["messages"]),
        vec!["burst 0", "burst 1", "burst 2"],
        "only the sends within the burst were stored"
    );

    // After the advertised wait, the rejected send goes through with its nonce.
    let wait_ms = body["error"]["retry_after_ms"].as_u64().unwrap_or(1000);
    tokio::time::sleep(std::time::Duration::from_millis(wait_ms + 50)).await;
    let reply = ws_send(&mut ws, &general, "burst 3", "burst-3").await;
    assert_eq!(outcome(&reply), "ack", "the retry after retry_after_ms succeeds: {reply}");
}

#[tokio::test]
async fn disabled_user_is_locked_out() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let mut first = member.connect(&server).await;
    let mut second = member.connect(&server).await;

    patch_user(&admin, &member.id(), json!({"disabled": true})).await;
    assert_eq!(first.closed().await, Ended::Close(4001), "the first socket closes with 4001");
    assert_eq!(second.closed().await, Ended::Close(4001), "the second socket closes with 4001");
    let (status, body) = member.get_json("/api/me").await;
    assert_eq!(status, 401, "the disabled user's token is revoked: {body}");
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 403, "a disabled user cannot log in");
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {}", member.token).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade completes");
    let refused = tokio::time::timeout(TIMEOUT, socket.next()).await.expect("the server answers");
    assert!(
        matches!(refused, Some(Ok(WsMessage::Close(Some(ref frame)))) if u16::from(frame.code) == 1008),
        "a WebSocket with the revoked token is closed with 1008: {refused:?}"
    );

    patch_user(&admin, &member.id(), json!({"disabled": false})).await;
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 200, "a re-enabled user logs in again");
    let (status, _) = member.get_json("/api/me").await;
    assert_eq!(status, 401, "the old token stays revoked after re-enabling");
}

#[tokio::test]
async fn deleted_user_is_closed() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    let (status, body) = call(admin.delete(&format!("/api/users/{}", member.id()))).await;
    assert_eq!(status, 200, "admin deletes the member: {body}");
    assert_eq!(ws.closed().await, Ended::Close(4001), "the deleted user's socket closes with 4001");
    let (status, _) = member.get_json("/api/me").await;
    assert_eq!(status, 401, "the deleted user's token no longer works");
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 401, "a deleted user cannot log in");
    let listed = user_list(&admin).await;
    assert!(
        !listed.as_array().unwrap().iter().any(|user| user["name"] == "member"),
        "the deleted user is not listed: {listed}"
    );
}

#[tokio::test]
async fn last_admin_cannot_demote_self() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let id = admin.id();

    for (change, patch) in [("demote", json!({"role": "moderator"})), ("disable", json!({"disabled": true}))] {
        let (status, body) = call(admin.patch(&format!("/api/users/{id}")).json(&patch)).await;
        assert_eq!(status, 409, "the last admin cannot {change} themselves: {body}");
        assert_eq!(body["error"]["code"], "conflict", "{change} returns the conflict code: {body}");
    }
    let (status, body) = call(admin.delete(&format!("/api/users/{id}"))).await;
    assert_eq!(status, 409, "the last admin cannot delete themselves: {body}");
    let (_, me) = admin.get_json("/api/me").await;
    assert_eq!(me["user"]["role"], "admin", "the admin is still admin: {me}");
    assert_eq!(me["user"]["disabled"], false, "the admin is still enabled: {me}");

    // With a second admin, stepping down works.
    let second = Client::member(&server, "second").await;
    patch_user(&admin, &second.id(), json!({"role": "admin"})).await;
    let user = patch_user(&admin, &id, json!({"role": "member"})).await;
    assert_eq!(user["role"], "member", "an admin steps down once another admin exists");
}

#[tokio::test]
async fn demoted_admin_loses_gated_channel() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = category_ids(&layout)[0].clone();
    let elite = create_channel(&admin, json!({"category": category, "name": "elite-room", "min_tier": "elite"})).await;
    let second = user_with(&server, &admin, "second", "admin", "free").await;
    let mut ws = second.connect(&server).await;
    let reply = ws_subscribe(&mut ws, &elite).await;
    assert_eq!(reply["op"], "subscribed", "an admin with tier free reads the elite channel: {reply}");

    patch_user(&admin, &second.id(), json!({"role": "member"})).await;
    let (mut frames, frame) = frames_until(&mut ws, "unsubscribed frame", |frame| frame["op"] == "unsubscribed").await;
    assert_eq!(frame["channel"], elite, "the elite subscription ends: {frame}");
    assert_eq!(frame["reason"], "forbidden", "the reason is forbidden: {frame}");
    frames.extend(pending_frames(&mut ws).await);
    let user = frames.iter().find(|frame| frame["op"] == "user").expect("a user frame arrived");
    assert_eq!(user["user"]["role"], "member", "the user frame has the new role: {user}");
    let layout = frames.iter().rev().find(|frame| frame["op"] == "layout").expect("a layout frame arrived");
    let entry = find_channel(&layout["layout"], &elite).expect("the elite channel stays listed, locked");
    assert_eq!(entry["locked"], true, "the elite channel is locked for the demoted user: {entry}");
    let (status, _) = poll(&second, &elite).await;
    assert_eq!(status, 404, "the demoted user gets 404 when polling the elite channel");
}

#[tokio::test]
async fn muted_member_cannot_edit() {
    let server = start_unlimited().await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let general = admin.channel_id("general").await;
    let (status, body) = member.post_message(&general, "before the mute", "edit-1").await;
    assert_eq!(status, 201, "the member posts before the mute: {body}");
    let id = body["message"]["id"].as_str().unwrap().to_string();

    patch_user(&admin, &member.id(), json!({"muted_until": now_ms() + 3_600_000})).await;
    let (status, body) = call(member.patch(&format!("/api/messages/{id}")).json(&json!({"content": "sneaked in"}))).await;
    assert_eq!(status, 403, "a muted member's edit is forbidden: {body}");
    let (_, page) = poll(&member, &general).await;
    assert!(contents(&page["messages"]).contains(&"before the mute".to_string()), "the message keeps its text: {page}");
    server.stop().await;
}

#[tokio::test]
async fn repeated_nonce_answers_while_limited() {
    let server = TestServer::start_with(|args| {
        args.send_burst = 1;
        args.send_per_second = 0.001;
    })
    .await;
    let admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let general = admin.channel_id("general").await;
    let (status, first) = member.post_message(&general, "only one", "once").await;
    assert_eq!(status, 201, "the first send fits the burst: {first}");

    let (status, body) = member.post_message(&general, "another", "other").await;
    assert_eq!(status, 429, "a new nonce over the rate limit gets 429: {body}");
    let (status, body) = member.post_message(&general, "only one", "once").await;
    assert_eq!(status, 200, "a repeated nonce over the rate limit gets its original: {body}");
    assert_eq!(body["message"]["id"], first["message"]["id"], "the repeat returns the original id");

    patch_user(&admin, &member.id(), json!({"muted_until": now_ms() + 3_600_000})).await;
    let (status, body) = member.post_message(&general, "only one", "once").await;
    assert_eq!(status, 200, "a repeated nonce while muted gets its original: {body}");
    server.stop().await;
}
