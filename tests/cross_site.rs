//! Cross-site defences and hostile input: no CORS on the API, security
//! headers on every kind of response, names that could impersonate others
//! rejected, and message content kept exactly as sent and served as JSON.

mod common;

use common::*;
use serde_json::{json, Value};

const FOREIGN_ORIGIN: &str = "https://evil.example.net";

/// The security headers every response carries, with their expected values.
const SECURITY_HEADERS: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// Asserts the security headers of one response.
fn assert_security_headers(response: &reqwest::Response, case: &str) {
    let headers = response.headers();
    for (name, expected) in SECURITY_HEADERS {
        let value = headers.get(name).map(|value| value.to_str().unwrap());
        assert_eq!(value, Some(expected), "{case}: header {name}");
    }
    let policy = headers
        .get("content-security-policy")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default();
    for directive in ["default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"] {
        assert!(policy.contains(directive), "{case}: the CSP has {directive}: {policy:?}");
    }
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "{case}: no Access-Control-Allow-Origin header"
    );
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;

    let page = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "GET / is served");
    assert_security_headers(&page, "GET /");

    // Scripts are served under content-hashed names that the page references.
    let html = page.text().await.unwrap();
    let script_path = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page references a script")
        .to_string();
    let script = http().get(server.url(&script_path)).send().await.unwrap();
    assert_eq!(script.status(), 200, "GET {script_path} is served");
    assert_security_headers(&script, "GET the script");

    let missing = ana.get("/api/channels/1/messages").send().await.unwrap();
    assert_eq!(missing.status(), 404, "an unknown channel gets 404");
    assert_security_headers(&missing, "an API error");

    let unauthenticated = http().get(server.url("/api/me")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401, "GET /api/me without a token gets 401");
    assert_security_headers(&unauthenticated, "a 401");

    let unknown = http().get(server.url("/no/such/page")).send().await.unwrap();
    assert_eq!(unknown.status(), 404, "an unknown path gets 404");
    assert_security_headers(&unknown, "an unknown path");
    server.stop().await;
}

#[tokio::test]
async fn refused_connection_has_security_headers() {
    let server = TestServer::start_with(|args| args.max_connections = 1).await;
    let _held = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let refused = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 503, "a connection over --max-connections gets 503");
    assert_security_headers(&refused, "a refused connection");
    server.stop().await;
}

#[tokio::test]
async fn preflight_gets_no_cors_headers() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let response = http()
        .request(reqwest::Method::OPTIONS, server.url(&format!("/api/channels/{general}/messages")))
        .header("Origin", FOREIGN_ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type, authorization")
        .send()
        .await
        .unwrap();
    assert!(!response.status().is_success(), "a preflight is not approved, got {}", response.status());
    for name in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-allow-credentials",
    ] {
        assert!(response.headers().get(name).is_none(), "the preflight answer has no {name} header");
    }

    let cross_origin_get = ana.get("/api/layout").header("Origin", FOREIGN_ORIGIN).send().await.unwrap();
    assert!(
        cross_origin_get.headers().get("access-control-allow-origin").is_none(),
        "an API answer to a foreign Origin has no Access-Control-Allow-Origin"
    );
    server.stop().await;
}

#[tokio::test]
async fn names_with_invisible_characters_rejected() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let (_, layout) = ana.get_json("/api/layout").await;
    let category = layout["categories"][0]["id"].as_str().unwrap().to_string();

    let impersonations = [
        ("gen\u{202E}lareneg", "a right-to-left override"),
        ("gen\u{200B}eral", "a zero-width space"),
        ("gen\u{00AD}eral", "a soft hyphen"),
        ("\u{FEFF}general", "a byte order mark"),
        ("gen\u{2066}eral\u{2069}", "a bidirectional isolate"),
        ("gen\u{2028}eral", "a line separator"),
        ("gen\neral", "a newline"),
    ];
    for (name, case) in impersonations {
        let response = ana
            .post("/api/channels")
            .json(&json!({"category": category, "name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "a channel name with {case} gets 400");
        let response = ana.post("/api/categories").json(&json!({"name": name})).send().await.unwrap();
        assert_eq!(response.status(), 400, "a category name with {case} gets 400");
    }

    let response = ana
        .post("/api/channels")
        .json(&json!({"category": category, "name": "news", "topic": "one\u{202E}two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a topic with a bidirectional override gets 400");
    let response = ana
        .post("/api/channels")
        .json(&json!({"category": category, "name": "news", "topic": "x".repeat(257)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a topic over 256 characters gets 400");
    let response = ana
        .post("/api/channels")
        .json(&json!({"category": category, "name": "x".repeat(65)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a channel name over 64 characters gets 400");

    let accepted = ["Café ☕", "日本語", "fam \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}", "\u{05E2}\u{05D1}\u{05E8}\u{05D9}\u{05EA}"];
    for name in accepted {
        let response = ana
            .post("/api/channels")
            .json(&json!({"category": category, "name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "the channel name {name:?} is accepted");
    }
    server.stop().await;
}

#[tokio::test]
async fn message_content_kept_verbatim() {
    let server = TestServer::start().await;
    let ana = Client::admin(&server, "ana").await;
    let general = ana.channel_id("general").await;

    let contents = [
        "<script>alert(1)</script> & <img src=x onerror=alert(2)>",
        "abc \u{202E}txt.exe\u{202C} and \u{2067}\u{05E9}\u{05DC}\u{05D5}\u{05DD}\u{2069} mixed",
        "zero\u{200B}width and joiner \u{1F468}\u{200D}\u{1F469}",
        "line one\nline two\twith a tab",
        "\"quotes\" and \\backslashes\\ and {\"json\": true}",
    ];
    for (index, content) in contents.iter().enumerate() {
        let (status, body) = ana.post_message(&general, content, &format!("verbatim-{index}")).await;
        assert_eq!(status, 201, "message {index} is accepted: {body}");
        assert_eq!(body["message"]["content"], *content, "message {index} comes back unchanged");
    }

    let response = ana
        .get(&format!("/api/channels/{general}/messages?after=0"))
        .send()
        .await
        .unwrap();
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(content_type, "application/json", "messages are served as JSON, never as HTML");
    let body: Value = response.json().await.unwrap();
    let stored: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, contents, "polling returns every content exactly as sent");
    server.stop().await;
}
