//! Feeds arbitrary text to the parser of WebSocket client operations.

#![no_main]

use aura::protocol::{validate_nonce, ClientOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The session passes only valid UTF-8 to the parser; it closes with 1007 otherwise.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ClientOp::Send { nonce, .. }) = ClientOp::parse(text) {
        let _ = validate_nonce(&nonce);
    }
});
