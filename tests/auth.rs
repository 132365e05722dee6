//! Accounts and authentication: registration, the setup code, login,
//! cookie and bearer sessions, and the Origin check on cookie requests.

mod common;

use std::os::unix::fs::PermissionsExt;

use aura::config::Registration;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An Origin that never matches a test server.
const FOREIGN_ORIGIN: &str = "https://evil.example.net";

/// Returns the `Set-Cookie` header that sets `aura_session`, if the response has one.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("aura_session="))
        .map(str::to_string)
}

/// Splits the attributes after the name=value pair off a `Set-Cookie` value.
fn cookie_attributes(cookie: &str) -> Vec<String> {
    cookie.split(';').skip(1).map(|part| part.trim().to_string()).collect()
}

/// Posts a message with the session cookie, and an Origin header when given.
async fn post_with_cookie(server: &TestServer, token: &str, channel: &str, origin: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(server.url(&format!("/api/channels/{channel}/messages")))
        .header("Cookie", format!("aura_session={token}"))
        .json(&json!({"content": "from a browser", "nonce": "cookie-1"}));
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    request.send().await.unwrap()
}

/// Reads the messages in a channel with a bearer token.
async fn channel_messages(client: &Client, channel: &str) -> Vec<Value> {
    let (status, body) = client
        .get_json(&format!("/api/channels/{channel}/messages?after=0&limit=200"))
        .await;
    assert_eq!(status, 200, "polling the channel works: {body}");
    body["messages"].as_array().unwrap().clone()
}

/// Opens a WebSocket with the session cookie and an Origin header.
async fn ws_with_cookie(
    server: &TestServer,
    token: &str,
    origin: &str,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("Cookie", format!("aura_session={token}").parse().unwrap());
    headers.insert("Origin", origin.parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(WsClient {
        stream,
        ready: Value::Null,
    })
}

#[tokio::test]
async fn setup_code_registers_admin_once() {
    let server = TestServer::start().await;
    let code = server.setup_code();
    let code_path = server.data_dir().join("setup-code");

    let response = register_raw(&server, "ana", PASSWORD, Some(&code)).await;
    assert_eq!(response.status(), 201, "registration with the setup code succeeds");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["role"], "admin", "the setup code makes an admin: {body}");
    assert_eq!(body["user"]["name"], "ana", "the response names the new user: {body}");
    assert!(!code_path.exists(), "the setup-code file is removed once an admin exists");

    let response = register_raw(&server, "mallory", PASSWORD, Some(&code)).await;
    assert_eq!(response.status(), 403, "a spent setup code is rejected");
    assert_eq!(
        login_raw(&server, "mallory", PASSWORD).await.status(),
        401,
        "the rejected registration created no account"
    );

    let ana = Client::login(&server, "ana").await;
    let (status, me) = ana.get_json("/api/me").await;
    assert_eq!(status, 200, "the admin can fetch /api/me");
    assert_eq!(me["user"]["role"], "admin", "the admin role is stored: {me}");
    server.stop().await;
}

#[tokio::test]
async fn registration_without_code_makes_member() {
    let server = TestServer::start().await;

    let response = register_raw(&server, "bob", PASSWORD, None).await;
    assert_eq!(response.status(), 201, "open registration succeeds without a code");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["role"], "member", "a registration without the code makes a member: {body}");
    assert!(
        server.data_dir().join("setup-code").exists(),
        "the setup code stays while no admin exists"
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_setup_code_is_rejected() {
    let server = TestServer::start().await;
    let code = server.setup_code();

    let response = register_raw(&server, "mallory", PASSWORD, Some("0123456789abcdef01234567")).await;
    assert_eq!(response.status(), 403, "a wrong setup code gets 403");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "the error body has code forbidden: {body}");
    assert_eq!(
        login_raw(&server, "mallory", PASSWORD).await.status(),
        401,
        "the rejected registration created no account"
    );
    assert_eq!(server.setup_code(), code, "a wrong code leaves the setup code unchanged");

    let response = register_raw(&server, "mallory", PASSWORD, None).await;
    assert_eq!(response.status(), 201, "the name stays free after the rejected registration");
    server.stop().await;
}

#[tokio::test]
async fn setup_code_file_is_private() {
    let server = TestServer::start().await;
    let metadata = std::fs::metadata(server.data_dir().join("setup-code")).expect("setup-code file exists");
    let mode = metadata.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "setup-code has mode 0600, found {mode:o}");
    server.stop().await;
}

#[tokio::test]
async fn username_rules_are_enforced() {
    let server = TestServer::start().await;

    let invalid = [
        ("a", "one character"),
        ("abcdefghijklmnopqrstuvwxyz0123456", "33 characters"),
        ("bad name", "a space"),
        ("bad/name", "a slash"),
        ("bad@name", "an at sign"),
        ("名前", "non-ASCII letters"),
        ("", "an empty name"),
    ];
    for (name, case) in invalid {
        let response = register_raw(&server, name, PASSWORD, None).await;
        assert_eq!(response.status(), 400, "username with {case} ({name:?}) gets 400");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "username with {case}: error code: {body}");
    }

    let valid = ["ab", "abcdefghijklmnopqrstuvwxyz012345", "Dot.dash-under_9"];
    for name in valid {
        let response = register_raw(&server, name, PASSWORD, None).await;
        assert_eq!(response.status(), 201, "username {name:?} is valid");
    }

    let response = register_raw(&server, "Carol", PASSWORD, None).await;
    assert_eq!(response.status(), 201, "Carol registers");
    let response = register_raw(&server, "cAROL", PASSWORD, None).await;
    assert_eq!(response.status(), 409, "a name that differs only in case is taken");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict", "duplicate name error code: {body}");
    server.stop().await;
}

#[tokio::test]
async fn short_password_is_rejected() {
    let server = TestServer::start().await;

    let response = register_raw(&server, "dave", "1234567", None).await;
    assert_eq!(response.status(), 400, "a 7-character password gets 400");
    assert_eq!(login_raw(&server, "dave", "1234567").await.status(), 401, "no account was created");

    let response = register_raw(&server, "dave", "12345678", None).await;
    assert_eq!(response.status(), 201, "an 8-character password is accepted");
    server.stop().await;
}

#[tokio::test]
async fn login_sets_session_cookie() {
    let server = TestServer::start().await;
    Client::member(&server, "erin").await;

    let response = login_raw(&server, "erin", PASSWORD).await;
    assert_eq!(response.status(), 200, "login succeeds");
    let cookie = session_cookie(&response).expect("login sets the aura_session cookie");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["name"], "erin", "login returns the user: {body}");
    let token = body["token"].as_str().expect("login returns a token");
    assert!(!token.is_empty(), "the token is not empty");
    assert!(
        cookie.starts_with(&format!("aura_session={token};")),
        "the cookie carries the returned token: {cookie}"
    );

    let attributes = cookie_attributes(&cookie);
    assert!(attributes.iter().any(|a| a == "HttpOnly"), "the cookie is HttpOnly: {cookie}");
    assert!(attributes.iter().any(|a| a == "SameSite=Lax"), "the cookie is SameSite=Lax: {cookie}");
    assert!(attributes.iter().any(|a| a == "Path=/"), "the cookie has Path=/: {cookie}");
    assert!(
        !attributes.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        "the cookie is not Secure without an https public origin: {cookie}"
    );
    server.stop().await;
}

#[tokio::test]
async fn https_public_origin_sets_secure_cookie() {
    let server = TestServer::start_with(|args| {
        args.public_origin = Some("https://chat.example.com".to_string());
    })
    .await;
    register_raw(&server, "frank", PASSWORD, None).await;

    let response = login_raw(&server, "frank", PASSWORD).await;
    assert_eq!(response.status(), 200, "login succeeds");
    let cookie = session_cookie(&response).expect("login sets the aura_session cookie");
    let attributes = cookie_attributes(&cookie);
    assert!(
        attributes.iter().any(|a| a == "Secure"),
        "the cookie is Secure with an https public origin: {cookie}"
    );
    assert!(attributes.iter().any(|a| a == "HttpOnly"), "the cookie stays HttpOnly: {cookie}");
    server.stop().await;
}

#[tokio::test]
async fn login_failures_look_the_same() {
    let server = TestServer::start().await;
    Client::member(&server, "gina").await;

    let unknown = login_raw(&server, "nobody", PASSWORD).await;
    assert_eq!(unknown.status(), 401, "an unknown user gets 401");
    assert!(session_cookie(&unknown).is_none(), "a failed login sets no cookie");
    let unknown_body = unknown.text().await.unwrap();

    let wrong = login_raw(&server, "gina", "wrong password").await;
    assert_eq!(wrong.status(), 401, "a wrong password gets 401");
    let wrong_body = wrong.text().await.unwrap();

    assert_eq!(unknown_body, wrong_body, "an unknown user and a wrong password get the same body");
    let body: Value = serde_json::from_str(&wrong_body).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "the error code is unauthorized: {body}");
    server.stop().await;
}

#[tokio::test]
async fn cookie_authenticates_requests() {
    let server = TestServer::start().await;
    Client::member(&server, "hana").await;

    // A client with a cookie store behaves like a browser: it keeps the
    // cookie from the login response and sends it back.
    let browser = reqwest::Client::builder().cookie_store(true).timeout(TIMEOUT).build().unwrap();
    let response = browser
        .post(server.url("/api/session"))
        .json(&json!({"username": "hana", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login succeeds");

    let response = browser.get(server.url("/api/me")).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET /api/me with the cookie succeeds");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["name"], "hana", "the cookie identifies the user: {body}");

    let response = http().get(server.url("/api/me")).send().await.unwrap();
    assert_eq!(response.status(), 401, "GET /api/me without credentials gets 401");
    server.stop().await;
}

#[tokio::test]
async fn bearer_token_authenticates_until_logout() {
    let server = TestServer::start().await;
    let ivan = Client::member(&server, "ivan").await;

    let (status, body) = ivan.get_json("/api/me").await;
    assert_eq!(status, 200, "GET /api/me with a bearer token succeeds");
    assert_eq!(body["user"]["name"], "ivan", "the bearer token identifies the user: {body}");

    let response = ivan.delete("/api/session").send().await.unwrap();
    assert_eq!(response.status(), 200, "logout succeeds");
    let cleared = session_cookie(&response).expect("logout clears the cookie");
    assert!(
        cookie_attributes(&cleared).iter().any(|a| a == "Max-Age=0"),
        "the logout cookie expires at once: {cleared}"
    );

    let (status, body) = ivan.get_json("/api/me").await;
    assert_eq!(status, 401, "the revoked token no longer authenticates: {body}");

    let response = http()
        .get(server.url("/api/me"))
        .header("Cookie", format!("aura_session={}", ivan.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the revoked token does not work as a cookie either");
    server.stop().await;
}

#[tokio::test]
async fn cookie_post_requires_matching_origin() {
    let server = TestServer::start().await;
    let jo = Client::member(&server, "jo").await;
    let general = jo.channel_id("general").await;

    let response = post_with_cookie(&server, &jo.token, &general, Some(FOREIGN_ORIGIN)).await;
    assert_eq!(response.status(), 403, "a cookie POST from a foreign Origin gets 403");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "the error code is forbidden: {body}");

    let response = post_with_cookie(&server, &jo.token, &general, None).await;
    assert_eq!(response.status(), 403, "a cookie POST without an Origin gets 403");

    let messages = channel_messages(&jo, &general).await;
    assert!(messages.is_empty(), "the rejected posts created nothing: {messages:?}");

    let response = post_with_cookie(&server, &jo.token, &general, Some(&server.origin())).await;
    assert_eq!(response.status(), 201, "a cookie POST from the server's own origin succeeds");
    let messages = channel_messages(&jo, &general).await;
    assert_eq!(messages.len(), 1, "the accepted post created one message");
    assert_eq!(messages[0]["content"], "from a browser", "the message has the posted content");
    server.stop().await;
}

#[tokio::test]
async fn cookie_post_accepts_localhost_origin() {
    let server = TestServer::start().await;
    let jo = Client::member(&server, "jo").await;
    let general = jo.channel_id("general").await;

    // A browser that opened http://localhost:PORT sends that Host and Origin.
    let host = format!("localhost:{}", server.addr.port());
    let response = http()
        .post(server.url(&format!("/api/channels/{general}/messages")))
        .header("Host", &host)
        .header("Origin", format!("http://{host}"))
        .header("Cookie", format!("aura_session={}", jo.token))
        .json(&json!({"content": "via localhost", "nonce": "localhost-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "an Origin that matches the Host header is accepted");
    server.stop().await;
}

#[tokio::test]
async fn bearer_post_needs_no_origin() {
    let server = TestServer::start().await;
    let kim = Client::member(&server, "kim").await;
    let general = kim.channel_id("general").await;

    let (status, body) = kim.post_message(&general, "from a bot", "bot-1").await;
    assert_eq!(status, 201, "a bearer POST without an Origin succeeds: {body}");
    assert_eq!(body["message"]["content"], "from a bot", "the message has the posted content: {body}");
    server.stop().await;
}

#[tokio::test]
async fn websocket_cookie_with_foreign_origin_is_rejected() {
    let server = TestServer::start().await;
    let lea = Client::member(&server, "lea").await;

    match ws_with_cookie(&server, &lea.token, FOREIGN_ORIGIN).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403, "the upgrade from a foreign Origin gets HTTP 403");
        }
        Err(other) => panic!("expected an HTTP 403 response, the upgrade failed with: {other}"),
        Ok(_) => panic!("the upgrade with the cookie from a foreign Origin succeeded"),
    }
    server.stop().await;
}

#[tokio::test]
async fn websocket_cookie_with_matching_origin_is_ready() {
    let server = TestServer::start().await;
    let max = Client::member(&server, "max").await;

    let mut ws = ws_with_cookie(&server, &max.token, &server.origin())
        .await
        .expect("the upgrade with the cookie from the server's origin succeeds");
    let ready = ws.recv().await;
    assert_eq!(ready["op"], "ready", "the first frame is ready: {ready}");
    assert_eq!(ready["user"]["name"], "max", "ready names the cookie's user: {ready}");
    server.stop().await;
}

#[tokio::test]
async fn websocket_without_credentials_is_closed() {
    let server = TestServer::start().await;

    let request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    let (stream, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade completes before authentication is rejected");
    let mut ws = WsClient {
        stream,
        ready: Value::Null,
    };
    assert_eq!(ws.closed().await, Ended::Close(1008), "a socket without credentials is closed with 1008");

    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", "Bearer not-a-valid-token".parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade completes before authentication is rejected");
    let mut ws = WsClient {
        stream,
        ready: Value::Null,
    };
    assert_eq!(ws.closed().await, Ended::Close(1008), "a socket with an unknown token is closed with 1008");
    server.stop().await;
}

#[tokio::test]
async fn closed_registration_allows_only_setup_code() {
    let server = TestServer::start_with(|args| args.registration = Registration::Closed).await;

    let response = register_raw(&server, "nina", PASSWORD, None).await;
    assert_eq!(response.status(), 403, "member registration is rejected while registration is closed");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "the error code is forbidden: {body}");
    assert_eq!(login_raw(&server, "nina", PASSWORD).await.status(), 401, "no account was created");

    let code = server.setup_code();
    let response = register_raw(&server, "owner", PASSWORD, Some(&code)).await;
    assert_eq!(response.status(), 201, "the setup-code registration works while registration is closed");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["role"], "admin", "the setup code still makes an admin: {body}");
    server.stop().await;
}

/// sled 0.34's asynchronous flush could hang for good when seven or more
/// ran at once; every login flushes, so a burst of logins must all finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_all_complete() {
    // Logins in progress count as failures until they finish, so the
    // throttle thresholds are raised above the 32 logins sent at once.
    let server = TestServer::start_with(|args| {
        args.login_delay_after = 1_000;
        args.login_lock_after = 1_000;
    })
    .await;
    Client::admin(&server, "root").await;
    let logins = (0..32).map(|_| login_raw(&server, "root", PASSWORD));
    let responses = tokio::time::timeout(TIMEOUT * 6, futures_util::future::join_all(logins))
        .await
        .expect("32 concurrent logins finish instead of hanging");
    for response in responses {
        assert_eq!(response.status(), 200, "every concurrent login succeeds");
    }
    server.stop().await;
}
