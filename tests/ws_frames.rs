//! WebSocket frame rules on the wire: invalid close frames, oversized and
//! fragmented control frames, invalid UTF-8, the size, fragment-count and
//! time limits of fragmented messages, and pings between fragments. A raw
//! client writes each frame by hand and reads the server's close code.

mod common;

use std::time::Duration;

use aura::config::ServeArgs;
use common::raw::{self, RawClient, RawEnd};
use common::*;

/// `--max-frame-bytes` of these tests.
const FRAME_LIMIT: usize = 4096;

/// `--max-fragments` of these tests.
const FRAGMENT_LIMIT: usize = 8;

const HEARTBEAT: &[u8] = br#"{"op":"heartbeat"}"#;

fn small_limits(args: &mut ServeArgs) {
    args.max_frame_bytes = FRAME_LIMIT;
    args.max_fragments = FRAGMENT_LIMIT;
}

/// Starts a server with small frame limits and connects a raw client as admin.
async fn raw_session(adjust: impl FnOnce(&mut ServeArgs)) -> (TestServer, RawClient) {
    let server = TestServer::start_with(|args| {
        small_limits(args);
        adjust(args);
    })
    .await;
    let ana = Client::admin(&server, "ana").await;
    let (client, _) = RawClient::connect(&server, &ana.token).await;
    (server, client)
}

/// A close frame payload: the code, big-endian, then the reason.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A server with small frame limits and an admin's token, for tests that
/// open one connection per case.
struct FrameServer {
    server: TestServer,
    token: String,
}

impl FrameServer {
    async fn start() -> FrameServer {
        let server = TestServer::start_with(small_limits).await;
        let ana = Client::admin(&server, "ana").await;
        FrameServer { server, token: ana.token }
    }

    /// Sends one frame on a new connection and returns how the server ended it.
    async fn end_after(&self, fin: bool, opcode: u8, payload: &[u8]) -> RawEnd {
        let (mut client, _) = RawClient::connect(&self.server, &self.token).await;
        client.write_frame(fin, opcode, payload).await;
        client.closed().await
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

#[tokio::test]
async fn close_with_invalid_code_gets_1002() {
    let frames = FrameServer::start().await;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let end = frames.end_after(true, raw::CLOSE, &close_payload(code, b"bye")).await;
        assert_eq!(end, RawEnd::Close(1002), "a close frame with code {code} is answered with 1002");
    }
    frames.stop().await;
}

#[tokio::test]
async fn close_with_one_byte_body_gets_1002() {
    let frames = FrameServer::start().await;
    let end = frames.end_after(true, raw::CLOSE, &[0x03]).await;
    assert_eq!(end, RawEnd::Close(1002), "a one-byte close payload is answered with 1002");
    frames.stop().await;
}

#[tokio::test]
async fn close_with_invalid_utf8_reason_gets_1007() {
    let frames = FrameServer::start().await;
    let end = frames.end_after(true, raw::CLOSE, &close_payload(1000, b"bad \xff\xfe")).await;
    assert_eq!(end, RawEnd::Close(1007), "a close reason that is not UTF-8 is answered with 1007");
    frames.stop().await;
}

#[tokio::test]
async fn valid_close_is_echoed() {
    let frames = FrameServer::start().await;
    for (code, reason) in [(1000u16, &b"done"[..]), (1001, b""), (4000, "fin \u{e9}".as_bytes())] {
        let end = frames.end_after(true, raw::CLOSE, &close_payload(code, reason)).await;
        assert_eq!(end, RawEnd::Close(code), "a close frame with code {code} is echoed");
    }
    let end = frames.end_after(true, raw::CLOSE, &[]).await;
    assert_eq!(end, RawEnd::Close(1005), "an empty close frame is echoed empty, which reads as 1005");
    frames.stop().await;
}

#[tokio::test]
async fn close_echo_has_no_reason() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(true, raw::CLOSE, &close_payload(1000, b"a long goodbye")).await;
    let frame = client.read_frame().await.expect("the server answers the close");
    assert_eq!(frame.opcode, raw::CLOSE, "the answer is a close frame: {frame:?}");
    assert_eq!(frame.payload, 1000u16.to_be_bytes(), "the echo carries the status code only");
    assert!(client.read_frame().await.is_none(), "the server ends the connection after the echo");
    server.stop().await;
}

#[tokio::test]
async fn control_frame_over_125_bytes_gets_1002() {
    let frames = FrameServer::start().await;
    let big = vec![b'a'; 126];
    let end = frames.end_after(true, raw::PING, &big).await;
    assert_eq!(end, RawEnd::Close(1002), "a 126-byte ping is answered with 1002");
    let end = frames.end_after(true, raw::PONG, &big).await;
    assert_eq!(end, RawEnd::Close(1002), "a 126-byte pong is answered with 1002");
    let end = frames.end_after(true, raw::CLOSE, &close_payload(1000, &big[..124])).await;
    assert_eq!(end, RawEnd::Close(1002), "a 126-byte close frame is answered with 1002");
    frames.stop().await;
}

#[tokio::test]
async fn control_frame_at_125_bytes_is_accepted() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(true, raw::PING, &[b'p'; 125]).await;
    let pong = client.read_frame().await.expect("the server answers the ping");
    assert_eq!(pong.opcode, raw::PONG, "a 125-byte ping gets a pong: {pong:?}");
    assert_eq!(pong.payload.len(), 125, "the pong echoes all 125 bytes");
    client.write_frame(true, raw::PONG, &[b'q'; 125]).await;
    client.send_text(std::str::from_utf8(HEARTBEAT).unwrap()).await;
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "the connection stays open after a 125-byte pong: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn fragmented_control_frame_gets_1002() {
    let frames = FrameServer::start().await;
    let end = frames.end_after(false, raw::PING, b"part").await;
    assert_eq!(end, RawEnd::Close(1002), "a ping without FIN is answered with 1002");
    let end = frames.end_after(false, raw::CLOSE, &close_payload(1000, b"")).await;
    assert_eq!(end, RawEnd::Close(1002), "a close frame without FIN is answered with 1002");
    let end = frames.end_after(false, raw::PONG, b"part").await;
    assert_eq!(end, RawEnd::Close(1002), "a pong without FIN is answered with 1002");
    frames.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    let frames = FrameServer::start().await;
    let end = frames.end_after(true, raw::TEXT, b"{\"op\":\"\xc3\x28\"}").await;
    assert_eq!(end, RawEnd::Close(1007), "a text frame with invalid UTF-8 is answered with 1007");

    let (mut client, _) = RawClient::connect(&frames.server, &frames.token).await;
    client.write_frame(false, raw::TEXT, b"{\"op\":\"heart").await;
    client.write_frame(true, raw::CONTINUATION, b"\xed\xa0\x80\"}").await;
    assert_eq!(
        client.closed().await,
        RawEnd::Close(1007),
        "a fragmented text message with an encoded surrogate is answered with 1007"
    );
    frames.stop().await;
}

#[tokio::test]
async fn fragmented_message_over_size_gets_1009() {
    let (server, mut client) = raw_session(|_| {}).await;
    let chunk = vec![b' '; FRAME_LIMIT / 2];
    client.write_frame(false, raw::TEXT, &chunk).await;
    client.write_frame(false, raw::CONTINUATION, &chunk).await;
    client.write_frame(true, raw::CONTINUATION, b" ").await;
    assert_eq!(
        client.closed().await,
        RawEnd::Close(1009),
        "fragments that together pass --max-frame-bytes are answered with 1009"
    );
    server.stop().await;
}

#[tokio::test]
async fn fragments_at_count_limit_are_accepted() {
    let (server, mut client) = raw_session(|_| {}).await;
    // One byte per frame, and the rest of the heartbeat in the last one.
    let mut pieces: Vec<&[u8]> = (0..FRAGMENT_LIMIT - 1).map(|index| &HEARTBEAT[index..index + 1]).collect();
    pieces.push(&HEARTBEAT[FRAGMENT_LIMIT - 1..]);
    for (index, piece) in pieces.iter().enumerate() {
        let opcode = if index == 0 { raw::TEXT } else { raw::CONTINUATION };
        client.write_frame(index + 1 == pieces.len(), opcode, piece).await;
    }
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "a message in exactly --max-fragments frames is handled: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn fragments_over_count_limit_get_1009() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(false, raw::TEXT, b"{").await;
    // Empty continuations keep the size tiny, so only the count can trigger the close.
    for _ in 1..FRAGMENT_LIMIT {
        client.write_frame(false, raw::CONTINUATION, b"").await;
    }
    client.write_frame(true, raw::CONTINUATION, b"}").await;
    assert_eq!(
        client.closed().await,
        RawEnd::Close(1009),
        "a message in more than --max-fragments frames is answered with 1009"
    );
    server.stop().await;
}

#[tokio::test]
async fn slow_fragmented_message_gets_1008() {
    let (server, mut client) = raw_session(|args| args.fragment_timeout_ms = 300).await;
    client.write_frame(false, raw::TEXT, br#"{"op":"#).await;
    // No further fragment: the writer's periodic check ends the message.
    let end = tokio::time::timeout(Duration::from_secs(20), client.closed())
        .await
        .expect("the server ends the connection in time");
    assert_eq!(end, RawEnd::Close(1008), "a fragmented message older than --fragment-timeout-ms is answered with 1008");
    server.stop().await;
}

#[tokio::test]
async fn ping_between_fragments_gets_pong() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(false, raw::TEXT, br#"{"op":"hea"#).await;
    client.write_frame(true, raw::PING, b"mid-message").await;
    let pong = client.read_frame().await.expect("the server answers the ping");
    assert_eq!(pong.opcode, raw::PONG, "the ping is answered before the message ends: {pong:?}");
    assert_eq!(pong.payload, b"mid-message", "the pong echoes the ping payload");

    client.write_frame(false, raw::CONTINUATION, br#"rtbe"#).await;
    client.write_frame(true, raw::PING, b"again").await;
    let pong = client.read_frame().await.expect("the server answers the second ping");
    assert_eq!(pong.payload, b"again", "a second ping between fragments is answered too");

    client.write_frame(true, raw::CONTINUATION, br#"at"}"#).await;
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "the fragmented message is handled after the pings: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn new_message_inside_fragmented_one_gets_1002() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(false, raw::TEXT, br#"{"op":"#).await;
    client.write_frame(true, raw::TEXT, HEARTBEAT).await;
    assert_eq!(
        client.closed().await,
        RawEnd::Close(1002),
        "a text frame before the fragmented message ends is answered with 1002"
    );
    server.stop().await;
}

#[tokio::test]
async fn reserved_bits_and_opcodes_get_1002() {
    let frames = FrameServer::start().await;
    let end = frames.end_after(true, 0x3, b"").await;
    assert_eq!(end, RawEnd::Close(1002), "reserved data opcode 0x3 is answered with 1002");
    let end = frames.end_after(true, 0xB, b"").await;
    assert_eq!(end, RawEnd::Close(1002), "reserved control opcode 0xB is answered with 1002");

    let (mut client, _) = RawClient::connect(&frames.server, &frames.token).await;
    let mut frame = raw::encode_client_frame(true, raw::TEXT, HEARTBEAT);
    frame[0] |= 0x40; // RSV1 without a negotiated extension
    tokio::io::AsyncWriteExt::write_all(&mut client.stream, &frame).await.unwrap();
    assert_eq!(client.closed().await, RawEnd::Close(1002), "a frame with RSV1 set is answered with 1002");
    frames.stop().await;
}

#[tokio::test]
async fn binary_message_gets_error_and_stays_open() {
    let (server, mut client) = raw_session(|_| {}).await;
    client.write_frame(true, raw::BINARY, b"\x00\x01").await;
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "error", "a binary message gets an error frame: {reply}");
    assert_eq!(reply["code"], "bad_request", "the error is bad_request: {reply}");
    client.send_text(std::str::from_utf8(HEARTBEAT).unwrap()).await;
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "the connection stays open after a binary message: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn unmasked_client_frame_gets_1002() {
    let frames = FrameServer::start().await;
    let (mut client, _) = RawClient::connect(&frames.server, &frames.token).await;
    let mut frame = vec![0x81, HEARTBEAT.len() as u8];
    frame.extend_from_slice(HEARTBEAT);
    tokio::io::AsyncWriteExt::write_all(&mut client.stream, &frame).await.unwrap();
    assert_eq!(client.closed().await, RawEnd::Close(1002), "an unmasked client frame is answered with 1002");
    frames.stop().await;
}

#[tokio::test]
async fn frame_sent_byte_by_byte_is_read() {
    let (server, mut client) = raw_session(|_| {}).await;
    let frame = raw::encode_client_frame(true, raw::TEXT, HEARTBEAT);
    for byte in frame {
        tokio::io::AsyncWriteExt::write_all(&mut client.stream, &[byte]).await.unwrap();
        tokio::io::AsyncWriteExt::flush(&mut client.stream).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "a frame that arrives one byte per segment is read whole: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn frames_in_one_segment_are_all_read() {
    let (server, mut client) = raw_session(|_| {}).await;
    let big = format!(r#"{{"op":"heartbeat","pad":"{}"}}"#, "x".repeat(FRAME_LIMIT - 100));
    let mut bytes = Vec::new();
    for round in 0..30 {
        let text = if round % 3 == 0 { big.as_bytes() } else { HEARTBEAT };
        bytes.extend(raw::encode_client_frame(true, raw::TEXT, text));
    }
    tokio::io::AsyncWriteExt::write_all(&mut client.stream, &bytes).await.unwrap();
    for round in 0..30 {
        let reply = client.recv_json().await;
        assert_eq!(reply["op"], "heartbeat_ack", "frame {round} of 30 written at once is answered: {reply}");
    }
    server.stop().await;
}

#[tokio::test]
async fn ping_flood_gets_pong_and_stays_open() {
    let (server, mut client) = raw_session(|_| {}).await;
    let mut bytes = Vec::new();
    for round in 0..1000u32 {
        bytes.extend(raw::encode_client_frame(true, raw::PING, &round.to_be_bytes()));
    }
    tokio::io::AsyncWriteExt::write_all(&mut client.stream, &bytes).await.unwrap();
    let mut last_pong = None;
    while last_pong != Some(999u32.to_be_bytes().to_vec()) {
        let frame = client.read_frame().await.expect("the connection stays open during a ping flood");
        assert_eq!(frame.opcode, raw::PONG, "only pongs answer pings: {frame:?}");
        last_pong = Some(frame.payload);
    }
    client.send_text(std::str::from_utf8(HEARTBEAT).unwrap()).await;
    let reply = client.recv_json().await;
    assert_eq!(reply["op"], "heartbeat_ack", "the connection works after a ping flood: {reply}");
    server.stop().await;
}
