//! Replays the fuzz corpus in `fuzz/corpus/` through the same entry points
//! as the fuzz targets, so that every input a fuzzer kept (and every crash
//! once fixed and added) stays checked by `cargo test`. An input passes
//! when it does not panic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aura::http::fuzz;
use aura::protocol::{validate_nonce, ClientOp};

/// Time one HTTP input may take; most finish in tens of milliseconds.
const DEADLINE: Duration = Duration::from_secs(2);

/// Every file of one target's corpus, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus directory {} is readable: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry reads").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{} reads: {error}", path.display()));
            (path, bytes)
        })
        .collect()
}

#[test]
fn client_op_corpus_parses_without_panic() {
    let inputs = corpus("client_op");
    assert!(inputs.len() >= 10, "the client_op corpus has its seeds, found {}", inputs.len());
    // The session parses only valid UTF-8, as the fuzz target does; a panic fails the test.
    for (_, bytes) in &inputs {
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        if let Ok(ClientOp::Send { nonce, .. }) = ClientOp::parse(text) {
            let _ = validate_nonce(&nonce);
        }
    }

    let heartbeat = inputs
        .iter()
        .find(|(path, _)| path.ends_with("heartbeat.json"))
        .expect("the corpus has the heartbeat seed");
    let parsed = ClientOp::parse(std::str::from_utf8(&heartbeat.1).unwrap());
    assert!(matches!(parsed, Ok(ClientOp::Heartbeat)), "the heartbeat seed parses: {parsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_corpus_served_without_panic() {
    let inputs = corpus("http_request");
    assert!(inputs.len() >= 10, "the http_request corpus has its seeds, found {}", inputs.len());
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let app = fuzz::start(data_dir.path()).await.expect("the fuzz server starts");
    let peer = "127.0.0.1:40000".parse().unwrap();

    let mut answered = 0;
    for (path, bytes) in &inputs {
        // A panic in the handler is raised again by exchange and fails the test here.
        let response = fuzz::exchange(app.clone(), peer, bytes, DEADLINE).await;
        if response.starts_with(b"HTTP/1.") {
            answered += 1;
        }
        if path.ends_with("healthz.http") {
            let text = String::from_utf8_lossy(&response);
            assert!(text.starts_with("HTTP/1.1 200"), "the healthz seed gets 200: {text}");
        }
        if path.ends_with("layout.http") {
            let text = String::from_utf8_lossy(&response);
            assert!(text.starts_with("HTTP/1.1 200"), "the fuzz admin's token authenticates: {text}");
        }
    }
    assert!(answered > inputs.len() / 2, "most inputs get an HTTP answer: {answered} of {}", inputs.len());
}
