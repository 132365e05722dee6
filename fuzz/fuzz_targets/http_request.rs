//! Feeds arbitrary bytes to the server's HTTP connection handler, as one
//! client connection would send them. The token of a fuzz admin is
//! `fuzz-admin-token`, so inputs can reach the authenticated handlers.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aura::http::fuzz;
use aura::server::App;
use libfuzzer_sys::fuzz_target;

/// Time one input may take before the harness moves on.
const DEADLINE: Duration = Duration::from_secs(2);

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
    _data_dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime starts");
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let app = runtime
            .block_on(fuzz::start(data_dir.path()))
            .expect("the fuzz server starts");
        Harness { runtime, app, _data_dir: data_dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let peer = "127.0.0.1:40000".parse().unwrap();
    harness
        .runtime
        .block_on(fuzz::exchange(harness.app.clone(), peer, data, DEADLINE));
});
