//! Serving the web client: index.html revalidated on every load, scripts and
//! style sheets under content-hashed names with a year-long cache lifetime,
//! and a Content-Security-Policy that allows no inline script.

mod common;

use common::{http, TestServer};

/// Returns the `"/name"` references of index.html that match `prefix` and `suffix`.
fn references(index: &str, prefix: &str, suffix: &str) -> Vec<String> {
    index
        .split('"')
        .filter(|part| part.starts_with(prefix) && part.ends_with(suffix))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn index_is_revalidated() {
    let server = TestServer::start().await;
    let response = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the page is served at /");
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "no-cache", "index.html is revalidated on every load");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "scripts only come from the server: {policy}");
    assert!(!policy.contains("unsafe-inline"), "the policy allows no inline script: {policy}");

    let index = response.text().await.unwrap();
    assert!(!index.contains("<script>"), "index.html has no inline script");
    let scripts = references(&index, "/app.", ".js");
    assert_eq!(scripts.len(), 1, "index.html loads one hashed entry module: {scripts:?}");
    server.stop().await;
}

#[tokio::test]
async fn hashed_assets_are_immutable() {
    let server = TestServer::start().await;
    let index = http().get(server.url("/")).send().await.unwrap().text().await.unwrap();
    let mut files = references(&index, "/", ".js");
    files.extend(references(&index, "/", ".css"));
    assert!(files.len() > 2, "index.html references the modules and the style sheet: {files:?}");

    for file in &files {
        let response = http().get(server.url(file)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file} is served");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{file} is cached for a year"
        );
        let body = response.text().await.unwrap();
        for (start, _) in body.match_indices("from './") {
            let rest = &body[start + "from './".len()..];
            let name = &rest[..rest.find('\'').unwrap_or(0)];
            assert_eq!(name.split('.').count(), 3, "{file} imports {name}, which has no hash");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn unhashed_asset_not_found() {
    let server = TestServer::start().await;
    for path in ["/app.js", "/style.css", "/app.000000000000.js"] {
        let response = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} is not served: only current hashed names are");
    }
    server.stop().await;
}
