//! A raw WebSocket client for frame-level tests: a plain TCP stream, a
//! hand-written upgrade request and hand-built frames. A test can send what
//! a library client rejects (invalid UTF-8, stray continuation frames,
//! oversized messages) and see every server frame, including the close code.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{TestServer, TIMEOUT};

/// WebSocket opcodes (RFC 6455 section 5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Maximum size of an HTTP upgrade response head that the client accepts.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Maximum payload of a server frame that the client accepts, so that a
/// corrupt length cannot make a test allocate gigabytes.
const MAX_SERVER_PAYLOAD: u64 = 16 << 20;

/// One frame received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Returns the status code of a close frame, or 1005 when it carries none.
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode != CLOSE {
            return None;
        }
        match self.payload.as_slice() {
            [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
            _ => Some(1005),
        }
    }

    /// Parses the payload of a text frame as JSON.
    pub fn json(&self) -> Option<Value> {
        if self.opcode != TEXT {
            return None;
        }
        serde_json::from_slice(&self.payload).ok()
    }
}

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// The server sent a close frame with this code.
    Close(u16),
    /// The TCP connection ended (EOF or reset) without a close frame.
    Dropped,
}

/// A WebSocket client that writes and reads individual frames.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Opens a connection with `Authorization: Bearer TOKEN` and returns the
    /// client and the `ready` frame.
    pub async fn connect(server: &TestServer, token: &str) -> (RawClient, Value) {
        Self::connect_with_buffer(server, token, None).await
    }

    /// Like [`RawClient::connect`], with the socket's receive buffer set to
    /// `receive_buffer` bytes before connecting, so that a client that stops
    /// reading fills it quickly.
    pub async fn connect_with_buffer(
        server: &TestServer,
        token: &str,
        receive_buffer: Option<u32>,
    ) -> (RawClient, Value) {
        let stream = open_stream(server.addr, receive_buffer).await;
        let mut client = RawClient { stream };
        client.upgrade(server.addr, token).await;
        let ready = client.read_frame().await.expect("the server sends ready after the upgrade");
        let ready = ready.json().unwrap_or_else(|| panic!("ready is a JSON text frame: {ready:?}"));
        assert_eq!(ready["op"], "ready", "first frame is ready: {ready}");
        (client, ready)
    }

    /// Sends the upgrade request and checks for `101 Switching Protocols`.
    async fn upgrade(&mut self, addr: SocketAddr, token: &str) {
        let request = format!(
            "GET /ws HTTP/1.1\r\n\
             Host: {addr}\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\
             \r\n"
        );
        self.stream.write_all(request.as_bytes()).await.expect("write upgrade request");

        // Read byte by byte so that no WebSocket frame after the head is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < MAX_RESPONSE_HEAD, "upgrade response head is too long");
            let byte = tokio::time::timeout(TIMEOUT, self.stream.read_u8())
                .await
                .expect("upgrade response arrives in time")
                .expect("upgrade response reads");
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/1.1 101"), "upgrade is accepted: {head}");
    }

    /// Writes one masked client frame with any opcode, FIN bit and payload.
    pub async fn write_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let frame = encode_client_frame(fin, opcode, payload);
        self.stream.write_all(&frame).await.expect("write frame");
    }

    /// Writes one complete text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.write_frame(true, TEXT, text.as_bytes()).await;
    }

    /// Writes one complete text frame carrying `value` as JSON.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Reads the next server frame, or `None` when the connection ended
    /// (EOF or reset) before a whole frame arrived. Panics after [`TIMEOUT`].
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        tokio::time::timeout(TIMEOUT, read_server_frame(&mut self.stream))
            .await
            .expect("a server frame or the end of the connection arrives in time")
    }

    /// Reads frames until the next text frame and returns it as JSON. Panics
    /// on a close frame or the end of the connection.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let frame = self.read_frame().await.expect("connection is open");
            assert_ne!(frame.opcode, CLOSE, "connection closed: code {:?}", frame.close_code());
            if let Some(value) = frame.json() {
                return value;
            }
        }
    }

    /// Reads text frames until one whose op is `op`.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let value = self.recv_json().await;
            if value["op"] == op {
                return value;
            }
        }
    }

    /// Reads every frame until the connection ends, and returns the text
    /// frames (as JSON) received before the end and how it ended.
    pub async fn read_to_end(&mut self) -> (Vec<Value>, RawEnd) {
        let mut texts = Vec::new();
        loop {
            let Some(frame) = self.read_frame().await else {
                return (texts, RawEnd::Dropped);
            };
            if let Some(code) = frame.close_code() {
                return (texts, RawEnd::Close(code));
            }
            if let Some(value) = frame.json() {
                texts.push(value);
            }
        }
    }

    /// Reads until the connection ends and returns how it ended.
    pub async fn closed(&mut self) -> RawEnd {
        self.read_to_end().await.1
    }
}

/// Connects to `addr`, optionally with a small receive buffer.
async fn open_stream(addr: SocketAddr, receive_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("create socket");
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).expect("set receive buffer size");
    }
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the test server");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
}

/// Encodes a client frame: the payload is masked with a random key, as
/// RFC 6455 section 5.3 requires of clients.
pub fn encode_client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = 0x80;
    match payload.len() {
        len if len < 126 => frame.push(mask_bit | len as u8),
        len if len <= u16::MAX as usize => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let key: [u8; 4] = rand::random();
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ key[i % 4]));
    frame
}

/// Reads one unmasked server frame. Returns `None` on EOF or a read error.
async fn read_server_frame(stream: &mut TcpStream) -> Option<RawFrame> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    let fin = header[0] & 0x80 != 0;
    let opcode = header[0] & 0x0F;
    assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
    let length = match header[1] & 0x7F {
        126 => stream.read_u16().await.ok()? as u64,
        127 => stream.read_u64().await.ok()?,
        short => short as u64,
    };
    assert!(length <= MAX_SERVER_PAYLOAD, "server frame of {length} bytes is implausibly large");
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload).await.ok()?;
    Some(RawFrame { fin, opcode, payload })
}
