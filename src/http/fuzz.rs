//! An entry point for fuzzing the HTTP request handling without a client
//! socket: raw bytes go through an in-memory pipe into the same connection
//! handler that serves TCP clients. The fuzz targets in `fuzz/` and the
//! corpus replay in `tests/fuzz_corpus.rs` call it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ServeArgs;
use crate::ids::now_ms;
use crate::server::{App, Server};
use crate::store::Session;

/// Bearer token of the admin that [`start`] creates, so that fuzz inputs
/// can reach the handlers behind authentication.
pub const ADMIN_TOKEN: &str = "fuzz-admin-token";

/// Capacity of the in-memory pipe, in bytes each way.
const PIPE_BYTES: usize = 64 * 1024;

/// Most response bytes kept; the rest is read and dropped.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Writes `input` to a new connection of `app`, as if from `peer`, and
/// returns what the server wrote before it closed the connection or
/// `deadline` passed. A panic in the handler is raised again here, so a
/// fuzzer reports it as a crash.
pub async fn exchange(app: Arc<App>, peer: SocketAddr, input: &[u8], deadline: Duration) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(PIPE_BYTES);
    let mut connection = tokio::spawn(crate::server::serve_io(app, server, peer));

    let mut response = Vec::new();
    let _ = tokio::time::timeout(deadline, async {
        // The server may close before it reads everything; the write error
        // then only means the request ends early.
        let _ = client.write_all(input).await;
        let mut buffer = [0u8; 4096];
        while let Ok(read) = client.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            let room = MAX_RESPONSE_BYTES.saturating_sub(response.len());
            response.extend_from_slice(&buffer[..read.min(room)]);
        }
    })
    .await;
    drop(client);

    // With the client gone the connection ends; a long poll may still wait, so bound it.
    match tokio::time::timeout(deadline, &mut connection).await {
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(_) => {}
        Err(_) => connection.abort(),
    }
    response
}

/// Opens a server on `data_dir` with timeouts short enough for one input
/// per run and limits high enough not to refuse the fuzzer, creates an
/// admin whose token is [`ADMIN_TOKEN`], and runs the server's background
/// tasks on the current runtime. The accept loop listens on a loopback port
/// that nothing connects to.
pub async fn start(data_dir: &Path) -> anyhow::Result<Arc<App>> {
    let mut args = ServeArgs::for_tests(data_dir);
    // An input ends when the server closes its idle connection, or a
    // WebSocket after its heartbeat timeout.
    args.header_read_timeout_ms = 20;
    args.keep_alive_timeout_ms = 20;
    args.body_read_timeout_ms = 20;
    args.heartbeat_ms = 100;
    args.registrations_per_hour = 1_000_000;
    args.login_delay_after = 1_000_000;
    args.login_lock_after = 1_000_000;
    args.send_burst = 1_000_000;
    args.send_per_second = 100_000.0;
    let server = Server::open(args.validate()?).await?;
    let app = server.app();

    let code = std::fs::read_to_string(data_dir.join(crate::auth::SETUP_CODE_FILE)).context("read the setup code")?;
    let admin = app.auth.register("fuzzadmin", "fuzz admin password", Some(code.trim())).await?;
    let session = Session {
        user: admin.id,
        created_ms: now_ms(),
        expires_ms: u64::MAX,
    };
    app.store
        .put_session(&crate::auth::token_hash(ADMIN_TOKEN), &session)
        .await
        .context("store the fuzz admin's session")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    tokio::spawn(server.run(listener, std::future::pending()));
    Ok(app)
}
