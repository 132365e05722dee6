//! The WebSocket client side: connecting from several loopback source
//! addresses, the shared clock, and cheap parsing of the frames that
//! arrive at high rates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// How long a client waits for a reply it needs before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on a monotonic clock shared by every task of this process.
/// Senders embed it in what they send and receivers subtract it from their
/// own reading, so a latency never mixes two clocks.
pub fn now_nanos() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The server address that clients connect to, and the loopback source
/// addresses that they spread over.
pub struct Endpoint {
    pub addr: SocketAddr,
    sources: Vec<Ipv4Addr>,
    next_source: AtomicUsize,
}

impl Endpoint {
    /// Spreads connections to `addr` over 127.0.0.2 .. 127.0.0.(1 + `sources`),
    /// so that each source address has its own range of ephemeral ports.
    pub fn new(addr: SocketAddr, sources: usize) -> Endpoint {
        let sources = (0..sources.clamp(1, 250))
            .map(|index| Ipv4Addr::new(127, 0, 0, 2 + index as u8))
            .collect();
        Endpoint {
            addr,
            sources,
            next_source: AtomicUsize::new(0),
        }
    }

    fn source(&self) -> Ipv4Addr {
        let index = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.sources[index % self.sources.len()]
    }

    /// Opens a TCP connection from the next source address, with Nagle's
    /// algorithm off as the servers have it.
    async fn tcp(&self) -> anyhow::Result<TcpStream> {
        let source = self.source();
        let socket = TcpSocket::new_v4().context("failed to create a TCP socket")?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("failed to bind the client socket to {source}"))?;
        let stream = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("failed to connect from {source} to {}", self.addr))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens a WebSocket to `/ws`, authenticated with `token` when given,
    /// and waits for the server's `ready` frame.
    pub async fn connect(&self, token: Option<&str>) -> anyhow::Result<Ws> {
        let stream = self.tcp().await?;
        let mut request = format!("ws://{}/ws", self.addr).into_client_request()?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
        }
        let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .context("WebSocket handshake failed")?;
        let first = recv_text(&mut ws, REPLY_TIMEOUT).await?;
        if op_of(&first) != Some("ready") {
            bail!("expected a ready frame first, got {}", preview(&first));
        }
        Ok(ws)
    }
}

/// Receives the next text frame, skipping ping, pong and binary frames.
pub async fn recv_text(ws: &mut Ws, timeout: Duration) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
        match next {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => bail!("server closed the connection: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Sends `frame` and returns the first reply whose op is `op`. Frames with
/// another op (heartbeat acks, live messages) are skipped, and an `error`
/// frame fails the request.
pub async fn request(ws: &mut Ws, frame: String, op: &str) -> anyhow::Result<String> {
    ws.send(Message::Text(frame)).await?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = recv_text(ws, left).await?;
        match op_of(&reply) {
            Some(found) if found == op => return Ok(reply),
            Some("error") => bail!("server returned an error: {}", preview(&reply)),
            _ => continue,
        }
    }
}

/// Returns the `op` of a server frame, found without parsing the whole frame.
pub fn op_of(frame: &str) -> Option<&str> {
    string_field(frame, "op")
}

/// Returns the value of the first `"name":"value"` string field in `frame`. Callers
/// use it only for fields whose values contain no escaped quotes.
pub fn string_field<'a>(frame: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = frame.find(&key)? + key.len();
    let length = frame[start..].find('"')?;
    Some(&frame[start..start + length])
}

/// Returns the first 200 characters of a frame, for error messages.
pub fn preview(frame: &str) -> &str {
    match frame.char_indices().nth(200) {
        Some((index, _)) => &frame[..index],
        None => frame,
    }
}

/// The marker a publisher writes at the start of a message's content: which
/// measurement step it belongs to, its sequence number in that step, and
/// the send time from [`now_nanos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub step: u32,
    pub seq: u64,
    pub sent_nanos: u64,
}

impl Probe {
    /// Formats the probe followed by `x` padding up to `content_bytes`.
    pub fn content(&self, content_bytes: usize) -> String {
        let mut content = format!("p{}.{}.{} ", self.step, self.seq, self.sent_nanos);
        let padding = content_bytes.saturating_sub(content.len());
        content.extend(std::iter::repeat_n('x', padding));
        content
    }

    /// Reads the probe back from a `message` frame.
    pub fn parse(frame: &str) -> Option<Probe> {
        let content = string_field(frame, "content")?;
        let marker = content.strip_prefix('p')?.split(' ').next()?;
        let mut parts = marker.split('.');
        let probe = Probe {
            step: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            sent_nanos: parts.next()?.parse().ok()?,
        };
        Some(probe)
    }
}

/// Returns a heartbeat frame, which both servers acknowledge with `heartbeat_ack`.
pub fn heartbeat() -> Message {
    Message::Text(r#"{"op":"heartbeat"}"#.to_string())
}

/// The interval at which clients send heartbeats: Aura's default
/// `--heartbeat-ms`, which the baseline also announces.
pub const HEARTBEAT: Duration = Duration::from_millis(4000);
