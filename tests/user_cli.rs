//! Tests of the `aura user` command, run as the built binary. Against a
//! running in-process server it talks over the admin socket in the data
//! directory, and the effect reaches live connections at once. Against a
//! stopped server it changes the database directly, and the change is
//! still there after a restart.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Maximum time one CLI run may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds every loop that reads frames.
const MAX_FRAMES: usize = 10_000;

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// What one CLI run printed and how it exited.
struct CliRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `aura user --data-dir DIR ARGS...`, with `stdin` as standard input
/// (or none), and waits for it to exit.
async fn aura_user(dir: &Path, args: &[&str], stdin: Option<&str>) -> CliRun {
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("user")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("AURA_DATA_DIR")
        .env_remove("AURA_TIERS")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the aura binary starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).await.expect("write to the CLI's stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("aura user {args:?} exits within {CLI_TIMEOUT:?}"))
        .expect("the CLI's output is readable");
    CliRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a CLI command that must succeed and returns its standard output.
async fn aura_user_ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let run = aura_user(dir, args, stdin).await;
    assert!(run.success, "aura user {args:?} succeeds; stderr: {}", run.stderr);
    run.stdout
}

/// Splits the output row for user `name` into whitespace-separated fields:
/// id, name, role, tier, then the tier end, the mute end and the state.
fn row_of(output: &str, name: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| line.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|fields| fields.get(1).map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("a row for {name} in the output:\n{output}"))
}

/// A user as GET /api/users returns it.
async fn listed_user(admin: &Client, name: &str) -> Value {
    let (status, body) = admin.get_json("/api/users").await;
    assert_eq!(status, 200, "admin lists users: {body}");
    body["users"]
        .as_array()
        .expect("users is an array")
        .iter()
        .find(|user| user["name"] == name)
        .unwrap_or_else(|| panic!("{name} in the user list: {body}"))
        .clone()
}

/// Reads frames until one has op `user`, and returns it.
async fn next_user_frame(ws: &mut WsClient) -> Value {
    for _ in 0..MAX_FRAMES {
        let frame = ws.recv().await;
        if frame["op"] == "user" {
            return frame;
        }
    }
    panic!("no user frame within {MAX_FRAMES} frames");
}

/// Sends a message and returns the `ack` or `error` frame for its nonce.
async fn try_send(ws: &mut WsClient, channel: &str, content: &str, nonce: &str) -> Value {
    ws.send(json!({"op": "send", "channel": channel, "content": content, "nonce": nonce})).await;
    for _ in 0..MAX_FRAMES {
        let frame = ws.recv().await;
        if (frame["op"] == "ack" || frame["op"] == "error") && frame["nonce"] == nonce {
            return frame;
        }
    }
    panic!("no reply to send {nonce} within {MAX_FRAMES} frames");
}

#[tokio::test]
async fn admin_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let metadata = std::fs::metadata(server.data_dir().join("admin.sock")).expect("admin.sock exists while running");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "the admin socket has mode 0600");
}

#[tokio::test]
async fn cli_list_shows_running_users() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    let _member = Client::member(&server, "member").await;

    let output = aura_user_ok(server.data_dir(), &["list"], None).await;
    let admin_row = row_of(&output, "admin");
    assert_eq!(admin_row[2], "admin", "the admin is listed with role admin:\n{output}");
    let member_row = row_of(&output, "member");
    assert_eq!(member_row[2], "member", "the member is listed with role member:\n{output}");
    assert_eq!(member_row[3], "free", "the member is listed with tier free:\n{output}");
    assert_eq!(member_row.last().map(String::as_str), Some("enabled"), "the member is enabled:\n{output}");
}

#[tokio::test]
async fn cli_add_reads_password_from_stdin() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;

    let output = aura_user_ok(
        server.data_dir(),
        &["add", "carol", "--role", "moderator"],
        Some("carol's long password\n"),
    )
    .await;
    assert_eq!(row_of(&output, "carol")[2], "moderator", "the CLI prints the new moderator:\n{output}");
    let response = login_raw(&server, "carol", "carol's long password").await;
    assert_eq!(response.status(), 200, "the new user logs in with the password from stdin at once");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["role"], "moderator", "the new user has the requested role: {body}");
}

#[tokio::test]
async fn cli_set_tier_pushes_user_frame() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "admin").await;
    let (_, layout) = admin.get_json("/api/layout").await;
    let category = layout["categories"][0]["id"].as_str().unwrap().to_string();
    let response = admin
        .post("/api/channels")
        .json(&json!({"category": category, "name": "pro-room", "min_tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "admin creates a pro channel");
    let created: Value = response.json().await.unwrap();
    let pro = created["id"].as_str().expect("new channel id").to_string();
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    let before = now_ms();
    aura_user_ok(server.data_dir(), &["set-tier", "member", "pro", "--days", "1"], None).await;

    let frame = next_user_frame(&mut ws).await;
    assert_eq!(frame["user"]["tier"], "pro", "the member's socket gets the new tier: {frame}");
    let expires = frame["user"]["tier_expires_at"].as_u64().unwrap_or(0);
    assert!(
        expires >= before + DAY_MS - 60_000 && expires <= now_ms() + DAY_MS + 60_000,
        "the tier ends one day from now: {frame}"
    );
    let layout = ws.recv_op("layout").await;
    let channel = layout["layout"]["categories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|category| category["channels"].as_array().unwrap().iter())
        .find(|channel| channel["id"] == pro.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the pro channel in the pushed layout: {layout}"));
    assert_eq!(channel["locked"], false, "the pro channel unlocks for the member: {channel}");
    let subscribed = ws.subscribe(&pro, None, 10).await;
    assert_eq!(subscribed["channel"], pro.as_str(), "the member subscribes to the pro channel at once");
}

#[tokio::test]
async fn cli_set_role_pushes_user_frame() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    aura_user_ok(server.data_dir(), &["set-role", "member", "moderator"], None).await;
    let frame = next_user_frame(&mut ws).await;
    assert_eq!(frame["user"]["role"], "moderator", "the member's socket gets the new role: {frame}");
    let (_, me) = member.get_json("/api/me").await;
    assert_eq!(me["user"]["role"], "moderator", "GET /api/me shows the new role: {me}");
}

#[tokio::test]
async fn cli_mute_blocks_sending_live() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "admin").await;
    let general = admin.channel_id("general").await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    aura_user_ok(server.data_dir(), &["mute", "member", "--minutes", "10"], None).await;
    let frame = next_user_frame(&mut ws).await;
    let until = frame["user"]["muted_until"].as_u64().unwrap_or(0);
    assert!(until > now_ms(), "the member's socket learns of the mute: {frame}");
    let reply = try_send(&mut ws, &general, "muted", "muted").await;
    assert_eq!(reply["code"], "forbidden", "a muted member's send is forbidden: {reply}");

    aura_user_ok(server.data_dir(), &["mute", "member", "--minutes", "0"], None).await;
    let frame = next_user_frame(&mut ws).await;
    assert_eq!(frame["user"]["muted_until"], Value::Null, "the mute ends: {frame}");
    let reply = try_send(&mut ws, &general, "unmuted", "unmuted").await;
    assert_eq!(reply["op"], "ack", "the unmuted member sends again: {reply}");
}

#[tokio::test]
async fn cli_disable_closes_sockets() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;
    let mut ws = member.connect(&server).await;

    aura_user_ok(server.data_dir(), &["disable", "member"], None).await;
    assert_eq!(ws.closed().await, Ended::Close(4001), "the disabled member's socket closes with 4001");
    let (status, _) = member.get_json("/api/me").await;
    assert_eq!(status, 401, "the disabled member's token is revoked");
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 403, "a disabled member cannot log in");

    aura_user_ok(server.data_dir(), &["disable", "member", "--enable"], None).await;
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 200, "a re-enabled member logs in");
}

#[tokio::test]
async fn cli_reset_password_replaces_old() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    let member = Client::member(&server, "member").await;

    aura_user_ok(server.data_dir(), &["reset-password", "member"], Some("a brand new password\n")).await;
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 401, "the old password no longer works");
    let response = login_raw(&server, "member", "a brand new password").await;
    assert_eq!(response.status(), 200, "the new password works");
    let (status, _) = member.get_json("/api/me").await;
    assert_eq!(status, 401, "sessions from before the reset are revoked");
}

#[tokio::test]
async fn cli_unknown_user_or_tier_fails() {
    let server = TestServer::start().await;
    let admin = Client::admin(&server, "admin").await;
    let _member = Client::member(&server, "member").await;

    // Durations that would overflow the expiry time are refused, not wrapped.
    let run = aura_user(server.data_dir(), &["mute", "member", "--minutes", "18446744073709551615"], None).await;
    assert!(!run.success, "a mute of u64::MAX minutes exits non-zero");
    assert!(run.stderr.contains("--minutes"), "the error names --minutes: {}", run.stderr);
    let run = aura_user(server.data_dir(), &["set-tier", "member", "pro", "--days=1e300"], None).await;
    assert!(!run.success, "a tier of 1e300 days exits non-zero");
    assert!(run.stderr.contains("--days"), "the error names --days: {}", run.stderr);
    let run = aura_user(server.data_dir(), &["set-tier", "member", "pro", "--days", "0"], None).await;
    assert!(!run.success, "a tier of 0 days exits non-zero");

    let run = aura_user(server.data_dir(), &["set-tier", "nobody", "pro"], None).await;
    assert!(!run.success, "set-tier of an unknown user exits non-zero");
    assert!(
        run.stderr.contains("\"nobody\" not found"),
        "the error names the unknown user: {}",
        run.stderr
    );
    let run = aura_user(server.data_dir(), &["set-tier", "member", "platinum"], None).await;
    assert!(!run.success, "set-tier with an unknown tier exits non-zero");
    assert!(
        run.stderr.contains("\"platinum\" is unknown") && run.stderr.contains("free, pro, elite"),
        "the error names the tier and the valid ones: {}",
        run.stderr
    );
    let run = aura_user(server.data_dir(), &["set-role", "member", "king"], None).await;
    assert!(!run.success, "set-role with an unknown role exits non-zero");
    assert!(run.stderr.contains("\"king\" is invalid"), "the error names the role: {}", run.stderr);

    let member = listed_user(&admin, "member").await;
    assert_eq!(member["tier"], "free", "the failed commands left the tier alone: {member}");
    assert_eq!(member["role"], "member", "the failed commands left the role alone: {member}");
}

#[tokio::test]
async fn cli_changes_stopped_server() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    for name in ["member", "bob", "dave"] {
        Client::member(&server, name).await;
    }
    let dir = server.stop().await;
    let path = dir.path().to_path_buf();

    let output = aura_user_ok(&path, &["list"], None).await;
    for name in ["admin", "member", "bob", "dave"] {
        row_of(&output, name);
    }
    aura_user_ok(&path, &["add", "carol"], Some("carol's long password\n")).await;
    aura_user_ok(&path, &["set-role", "member", "moderator"], None).await;
    let before = now_ms();
    aura_user_ok(&path, &["set-tier", "member", "elite", "--days", "2"], None).await;
    aura_user_ok(&path, &["mute", "bob", "--minutes", "30"], None).await;
    aura_user_ok(&path, &["disable", "dave"], None).await;
    aura_user_ok(&path, &["reset-password", "member"], Some("a brand new password\n")).await;

    let run = aura_user(&path, &["set-tier", "nobody", "pro"], None).await;
    assert!(!run.success, "an unknown user exits non-zero on a stopped server");
    assert!(run.stderr.contains("\"nobody\" not found"), "the error names the user: {}", run.stderr);
    let run = aura_user(&path, &["set-tier", "bob", "platinum"], None).await;
    assert!(!run.success, "an unknown tier exits non-zero on a stopped server");
    assert!(run.stderr.contains("\"platinum\" is unknown"), "the error names the tier: {}", run.stderr);

    let output = aura_user_ok(&path, &["list"], None).await;
    let member_row = row_of(&output, "member");
    assert_eq!(member_row[2], "moderator", "list shows the new role:\n{output}");
    assert_eq!(member_row[3], "elite", "list shows the new tier:\n{output}");
    assert_eq!(row_of(&output, "dave").last().map(String::as_str), Some("disabled"), "list shows dave disabled");

    // Everything persists into the next run of the server.
    let server = TestServer::start_in(dir, |_| {}).await;
    let admin = Client::login(&server, "admin").await;
    let response = login_raw(&server, "carol", "carol's long password").await;
    assert_eq!(response.status(), 200, "the user added while stopped logs in");

    let member = listed_user(&admin, "member").await;
    assert_eq!(member["role"], "moderator", "the role set while stopped persists: {member}");
    assert_eq!(member["tier"], "elite", "the tier set while stopped persists: {member}");
    let expires = member["tier_expires_at"].as_u64().unwrap_or(0);
    assert!(
        expires >= before + 2 * DAY_MS - 60_000 && expires <= now_ms() + 2 * DAY_MS + 60_000,
        "the tier ends two days after the command: {member}"
    );
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 401, "the password from before the reset fails");
    let response = login_raw(&server, "member", "a brand new password").await;
    assert_eq!(response.status(), 200, "the password set while stopped works");

    let bob = listed_user(&admin, "bob").await;
    assert!(bob["muted_until"].as_u64().unwrap_or(0) > now_ms(), "bob's mute persists: {bob}");
    let bob = Client::login(&server, "bob").await;
    let general = admin.channel_id("general").await;
    let (status, body) = bob.post_message(&general, "hello", "bob-1").await;
    assert_eq!(status, 403, "bob, muted while the server was stopped, may not send: {body}");

    let response = login_raw(&server, "dave", PASSWORD).await;
    assert_eq!(response.status(), 403, "dave, disabled while the server was stopped, cannot log in");
}

#[tokio::test]
async fn cli_add_rejects_taken_name() {
    let server = TestServer::start().await;
    let _admin = Client::admin(&server, "admin").await;
    let _member = Client::member(&server, "member").await;

    let run = aura_user(server.data_dir(), &["add", "MEMBER"], Some("another long password\n")).await;
    assert!(!run.success, "adding a name that differs only in case exits non-zero");
    assert!(run.stderr.contains("is taken"), "the error says the name is taken: {}", run.stderr);
    let response = login_raw(&server, "member", PASSWORD).await;
    assert_eq!(response.status(), 200, "the existing user keeps their password");
}

#[tokio::test]
async fn cli_admin_spends_setup_code() {
    let server = TestServer::start().await;
    let code = server.setup_code();

    aura_user_ok(server.data_dir(), &["add", "boss", "--role", "admin"], Some("the boss password\n")).await;
    let response = register_raw(&server, "stranger", PASSWORD, Some(&code)).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_ne!(body["user"]["role"], "admin", "the setup code makes no admin once one exists: {body}");
    assert_eq!(status, 403, "registering with the setup code after an admin exists is refused: {body}");
    assert!(
        !server.data_dir().join("setup-code").exists(),
        "the setup-code file is removed once an admin exists"
    );
}
