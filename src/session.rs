//! One WebSocket connection: a reader task, a writer loop and the client
//! operations.
//!
//! The socket is split once. The reader task owns the read half and is the
//! only caller of `read_frame`, so that handling a request never delays the
//! writer. The writer loop owns the write half and
//! drains the connection's [`Outbox`]; nothing else writes to the socket.
//! The reader leaves the control frames it must reply with (pong, close
//! echo) in [`ControlFrames`] for the writer. Frames are read and written with
//! the codec in [`crate::ws_frames`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::Instrument;

use crate::error::ApiError;
use crate::hub::{CloseSignal, ConnHandle, Identity, Outbox, Reply, CLOSE_ACCOUNT_ENDED};
use crate::ids::now_ms;
use crate::presence::{ConnectionSlot, Ids, CLOSE_TOO_MANY_CONNECTIONS};
use crate::protocol::{self, encode_frame, error_frame, message_views, page_limit, ClientOp, UserView};
use crate::server::App;
use crate::ws_frames::{append_close_frame, append_frame, check_close, FrameReader, ReadError, Reassembler};

/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error, such as a stray continuation frame.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message is not valid UTF-8.
pub const CLOSE_INVALID_UTF8: u16 = 1007;
/// Close code: the origin or authentication was refused, or a fragmented
/// message took longer than `--fragment-timeout-ms`.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message exceeds `--max-frame-bytes` or `--max-fragments`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: no frame from the client for 2.5 heartbeat intervals.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4009;
/// Not sent on the wire: the peer is gone, so the socket ends without a close frame.
const CLOSE_ABNORMAL: u16 = 1006;

/// Maximum time one socket write may take before the connection counts as
/// stalled and is closed with 4008.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for the client's close frame after sending its own.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes of frames the writer collects for one socket write; it stops
/// adding queued frames once a batch reaches this size.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Share of `--send-queue` that one connection's writes in flight (sent
/// but not yet acknowledged) may fill with their acks. The reader stops
/// reading the client's frames while the limit is reached, so a client
/// that pipelines sends is slowed down instead of overflowing its own
/// queue with acks.
const IN_FLIGHT_SHARE: usize = 4;

/// Frames the writer sends in one socket write at most.
const FRAMES_PER_WRITE: usize = 64;

type SocketRead = FrameReader<ReadHalf<TokioIo<Upgraded>>>;
type SocketWrite = WriteHalf<TokioIo<Upgraded>>;

/// Control frames the reader leaves for the writer to send. The reader
/// notifies [`Connection::control_ready`] after each change.
#[derive(Default)]
struct ControlFrames {
    /// Payload of the pong that replies to the most recent ping. A newer ping
    /// replaces an unanswered one, which RFC 6455 section 5.5.3 allows, so
    /// a client that floods pings costs no memory.
    pong: Option<Vec<u8>>,
    /// The client's close frame to echo: `Some(None)` for an empty close,
    /// `Some(Some(code))` for one with a status code.
    close_echo: Option<Option<u16>>,
    /// Set when the read loop has ended, for whatever reason.
    reader_ended: bool,
}

/// State shared by the reader and the writer of one connection.
struct Connection {
    app: Arc<App>,
    /// The user as of the connect; each operation reads the current state
    /// of the account from the directory.
    user: Identity,
    /// The outbox and subscriptions, as registered with the hub.
    handle: ConnHandle,
    close: Arc<CloseSignal>,
    /// Time of the last frame from the client, ms since the Unix epoch.
    last_seen: AtomicU64,
    /// When the fragmented message in progress started, ms since the Unix
    /// epoch; 0 while none is. The writer closes the connection with 1008
    /// once it is older than `--fragment-timeout-ms`.
    fragment_started: AtomicU64,
    /// Permits for writes in flight: `--send-queue` / [`IN_FLIGHT_SHARE`].
    in_flight: Arc<Semaphore>,
    /// Number of permits `in_flight` was created with.
    in_flight_limit: usize,
    /// Set once the writer is closing the socket; from then on the reader
    /// starts no write, because its ack could no longer reach the client.
    closing: AtomicBool,
    /// The connection's count in the user's presence; taken, which ends the
    /// count, as soon as the connection is known to be dead.
    presence_slot: Mutex<Option<ConnectionSlot>>,
    /// Control frames waiting for the writer.
    control: Mutex<ControlFrames>,
    /// Wakes the writer after the reader changed `control`.
    control_ready: Notify,
}

impl Connection {
    /// Stops counting this connection towards the user being online. Safe
    /// to call more than once.
    fn end_presence(&self) {
        drop(self.presence_slot.lock().take());
    }
}

/// Runs a WebSocket connection until it closes. An `Err` user, a client
/// that failed authentication, is closed at once with 1008 and that reason.
/// A connection over `--max-connections-per-user` is closed at once with 4029.
pub async fn run(
    app: Arc<App>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    user: Result<Identity, &'static str>,
    peer: SocketAddr,
) {
    let conn = app.next_conn_id();
    let user_id = user.as_ref().map(|user| user.id).unwrap_or(0);
    let span = tracing::info_span!("ws", %peer, conn, user = user_id);
    async move {
        let mut socket = match upgrade.await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "websocket upgrade failed");
                return;
            }
        };
        let user = match user {
            Ok(user) => user,
            Err(reason) => {
                let _ = socket.write_frame(Frame::close(CLOSE_POLICY, reason.as_bytes())).await;
                return;
            }
        };
        let slot = match app.presence.claim(user.id) {
            Ok(slot) => slot,
            Err(error) => {
                tracing::info!(%error, "websocket rejected");
                let reason = close_reason(CLOSE_TOO_MANY_CONNECTIONS);
                let _ = socket.write_frame(Frame::close(CLOSE_TOO_MANY_CONNECTIONS, reason.as_bytes())).await;
                return;
            }
        };
        tracing::info!("websocket connected");
        serve(app, socket, user, conn, slot).await;
    }
    .instrument(span)
    .await
}

async fn serve(
    app: Arc<App>,
    socket: fastwebsockets::WebSocket<TokioIo<Upgraded>>,
    user: Identity,
    conn: u64,
    slot: ConnectionSlot,
) {
    let (read_half, mut writer) = tokio::io::split(socket.into_inner());
    // A single frame over the limit is rejected before it is read; the
    // whole message is checked against it while fragments are collected.
    let reader = FrameReader::new(read_half, app.config.max_frame_bytes);

    let (outbox, frames, close) = Outbox::new(conn, app.config.send_queue, app.config.send_queue_bytes);
    let handle = ConnHandle {
        outbox,
        subscriptions: Arc::new(Mutex::new(HashSet::new())),
    };
    let in_flight_limit = (app.config.send_queue / IN_FLIGHT_SHARE).max(1);
    let connection = Arc::new(Connection {
        app: app.clone(),
        user,
        handle: handle.clone(),
        close,
        last_seen: AtomicU64::new(now_ms()),
        fragment_started: AtomicU64::new(0),
        in_flight: Arc::new(Semaphore::new(in_flight_limit)),
        in_flight_limit,
        closing: AtomicBool::new(false),
        presence_slot: Mutex::new(Some(slot)),
        control: Mutex::new(ControlFrames::default()),
        control_ready: Notify::new(),
    });
    app.presence
        .attach(conn, &connection.handle.outbox, |online| ready_frame(&connection, online));
    app.hub.register_connection(connection.user.id, handle);

    let mut read_task = tokio::spawn(read_loop(connection.clone(), reader).in_current_span());
    let code = write_loop(&connection, &mut writer, frames).await;
    connection.closing.store(true, Ordering::Release);
    // The connection is dead or closing: it stops counting now, not after
    // the reader has finished.
    connection.end_presence();
    app.presence.detach(conn);

    if tokio::time::timeout(CLOSE_GRACE, &mut read_task).await.is_err() {
        read_task.abort();
    }
    app.hub.unregister_connection(connection.user.id, conn);
    if code == crate::hub::outbox::CLOSE_TOO_SLOW {
        app.metrics.slow_consumer_closes.inc();
    }
    tracing::info!(code, "websocket closed");
}

/// Builds the first frame: epoch, user, heartbeat interval, layout and the
/// users shown online.
fn ready_frame(connection: &Connection, online: &[u64]) -> Bytes {
    let app = &connection.app;
    let user = app.accounts.get(connection.user.id).map(|user| UserView::of(&user));
    encode_frame(&serde_json::json!({
        "op": "ready",
        "epoch": app.epoch,
        "user": user,
        "heartbeat_ms": app.config.heartbeat.as_millis() as u64,
        "max_message_chars": app.config.max_message_chars,
        "layout": app.hub.layout_for(&connection.user),
        "presence": {"online": Ids(online)},
    }))
}

/// Writes queued frames until the connection closes, and returns the close code.
async fn write_loop(
    connection: &Connection,
    writer: &mut SocketWrite,
    mut frames: mpsc::Receiver<Bytes>,
) -> u16 {
    let config = &connection.app.config;
    let heartbeat_timeout = config.heartbeat.mul_f64(2.5);
    let fragment_timeout_ms = config.fragment_timeout.as_millis() as u64;
    let mut check = tokio::time::interval((config.heartbeat / 2).min(config.fragment_timeout / 2));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = connection.app.shutdown.clone();

    loop {
        tokio::select! {
            biased;
            code = connection.close.requested() => return close_socket(writer, code).await,
            _ = shutdown.wait() => {
                // Every send this connection started gets its ack before the
                // close frame: taking all in-flight permits waits for those
                // acks, and holding them keeps the reader from starting more.
                let all = u32::try_from(connection.in_flight_limit).unwrap_or(u32::MAX);
                let drain = connection.app.config.drain;
                let _quiesced = tokio::time::timeout(drain, connection.in_flight.acquire_many(all)).await;
                connection.closing.store(true, Ordering::Release);
                while let Ok(frame) = frames.try_recv() {
                    if !write_queued(connection, writer, frame, &mut frames).await {
                        // A frame may be half sent, so no close frame can follow.
                        return CLOSE_GOING_AWAY;
                    }
                }
                return close_socket(writer, CLOSE_GOING_AWAY).await;
            }
            _ = connection.control_ready.notified() => {
                if let Some(code) = write_control(connection, writer).await {
                    return code;
                }
            }
            frame = frames.recv() => {
                let Some(frame) = frame else { return CLOSE_ABNORMAL };
                if !write_queued(connection, writer, frame, &mut frames).await {
                    // The write may have stopped inside a frame, and a close
                    // frame after it would corrupt the stream, so the
                    // connection ends without one.
                    tracing::warn!("socket write stalled or failed; closing without a close frame");
                    connection.close.request(crate::hub::outbox::CLOSE_TOO_SLOW);
                    return connection.close.code().unwrap_or(crate::hub::outbox::CLOSE_TOO_SLOW);
                }
            }
            _ = check.tick() => {
                let silent_ms = now_ms().saturating_sub(connection.last_seen.load(Ordering::Acquire));
                if silent_ms > heartbeat_timeout.as_millis() as u64 {
                    tracing::info!(silent_ms, "heartbeat timed out");
                    // The peer may be gone without a FIN, so the close
                    // frame below can stall: stop counting it first.
                    connection.end_presence();
                    return close_socket(writer, CLOSE_HEARTBEAT_TIMEOUT).await;
                }
                let started = connection.fragment_started.load(Ordering::Acquire);
                if started != 0 && now_ms().saturating_sub(started) > fragment_timeout_ms {
                    tracing::info!("fragmented message timed out");
                    return close_socket(writer, CLOSE_POLICY).await;
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued, up to [`FRAMES_PER_WRITE`]
/// frames or [`WRITE_BATCH_BYTES`], in one socket write. Returns false when
/// the write failed or stalled.
async fn write_queued(
    connection: &Connection,
    writer: &mut SocketWrite,
    first: Bytes,
    frames: &mut mpsc::Receiver<Bytes>,
) -> bool {
    let mut payload_bytes = first.len();
    let mut batch = Vec::with_capacity(first.len() + 10);
    append_frame(&mut batch, OpCode::Text, &first);
    for _ in 1..FRAMES_PER_WRITE {
        if batch.len() >= WRITE_BATCH_BYTES {
            break;
        }
        let Ok(next) = frames.try_recv() else { break };
        payload_bytes += next.len();
        append_frame(&mut batch, OpCode::Text, &next);
    }
    let written = write_with_timeout(writer, &batch).await;
    connection.handle.outbox.written(payload_bytes);
    written
}

/// Writes the control frames the reader left. Returns the close code once
/// the connection is over: 1000 after echoing the client's close, or
/// [`CLOSE_ABNORMAL`] when the reader ended without one or the write failed.
async fn write_control(connection: &Connection, writer: &mut SocketWrite) -> Option<u16> {
    let (pong, close_echo, reader_ended) = {
        let mut control = connection.control.lock();
        (control.pong.take(), control.close_echo.take(), control.reader_ended)
    };
    let mut batch = Vec::new();
    if let Some(payload) = pong {
        append_frame(&mut batch, OpCode::Pong, &payload);
    }
    if let Some(code) = close_echo {
        append_close_frame(&mut batch, code, "");
    }
    let written = batch.is_empty() || write_with_timeout(writer, &batch).await;
    if close_echo.is_some() {
        return Some(1000);
    }
    // A reader that ended without a close frame to echo asked for its close
    // code first, or the peer is gone.
    (!written || reader_ended).then_some(CLOSE_ABNORMAL)
}

async fn write_with_timeout(writer: &mut SocketWrite, bytes: &[u8]) -> bool {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    matches!(tokio::time::timeout(WRITE_STALL_TIMEOUT, write).await, Ok(Ok(())))
}

/// Sends a close frame with `code`, unless the peer is already gone, and
/// returns the code.
async fn close_socket(writer: &mut SocketWrite, code: u16) -> u16 {
    if code != CLOSE_ABNORMAL {
        let mut frame = Vec::new();
        append_close_frame(&mut frame, Some(code), close_reason(code));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            writer.write_all(&frame).await?;
            writer.flush().await
        })
        .await;
    }
    code
}

fn close_reason(code: u16) -> &'static str {
    match code {
        CLOSE_GOING_AWAY => "server shutting down",
        CLOSE_PROTOCOL_ERROR => "protocol error",
        CLOSE_POLICY => "fragmented message took too long",
        CLOSE_INVALID_UTF8 => "text is not valid UTF-8",
        CLOSE_TOO_BIG => "message too large",
        crate::hub::outbox::CLOSE_TOO_SLOW => "too slow: resume with subscribe after your last rev",
        CLOSE_ACCOUNT_ENDED => "account disabled or deleted",
        CLOSE_HEARTBEAT_TIMEOUT => "heartbeat timeout",
        CLOSE_TOO_MANY_CONNECTIONS => "too many connections for this user: close another tab or device first",
        _ => "",
    }
}

/// Reads frames until the client closes or breaks the protocol, and handles
/// each complete message. The pong for a ping goes through [`ControlFrames`]
/// as the ping arrives, also between the fragments of a message.
async fn read_loop(connection: Arc<Connection>, mut reader: SocketRead) {
    let _ended = ReaderEnded(&connection);
    let config = &connection.app.config;
    let mut reassembler = Reassembler::new(config.max_frame_bytes, config.max_fragments);

    loop {
        let frame = match reader.read_frame().await {
            Ok(frame) => frame,
            Err(error) => {
                let code = match error {
                    ReadError::Io(_) => CLOSE_ABNORMAL,
                    ReadError::Protocol(code) => code,
                };
                tracing::debug!(%error, code, "read ended");
                connection.close.request(code);
                return;
            }
        };
        connection.last_seen.store(now_ms(), Ordering::Release);

        match frame.opcode {
            OpCode::Close => {
                match check_close(frame.payload) {
                    // The writer echoes the status code, then ends the connection.
                    Ok(code) => connection.control.lock().close_echo = Some(code),
                    Err(code) => connection.close.request(code),
                }
                return;
            }
            OpCode::Ping => {
                connection.control.lock().pong = Some(frame.payload.to_vec());
                connection.control_ready.notify_one();
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }

        let starts_message = !reassembler.in_progress();
        let complete = match reassembler.push(frame.fin, frame.opcode, frame.payload) {
            Ok(Some(message)) => message,
            Ok(None) => {
                if starts_message {
                    connection.fragment_started.store(now_ms().max(1), Ordering::Release);
                }
                continue;
            }
            Err(code) => {
                connection.close.request(code);
                return;
            }
        };
        connection.fragment_started.store(0, Ordering::Release);

        let (opcode, bytes) = complete;
        if opcode == OpCode::Binary {
            connection.handle.outbox.push(error_frame(&ApiError::bad_request("binary frames are not supported: send JSON text"), None));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            connection.close.request(CLOSE_INVALID_UTF8);
            return;
        };
        connection.handle.outbox.wait_for_room().await;
        handle_text(&connection, text).await;
    }
}

/// Marks the read loop as ended when dropped, also when it panics, and
/// wakes the writer so that it ends the connection.
struct ReaderEnded<'a>(&'a Connection);

impl Drop for ReaderEnded<'_> {
    fn drop(&mut self) {
        self.0.control.lock().reader_ended = true;
        self.0.control_ready.notify_one();
    }
}

/// Handles one client operation; errors go back to the client as `error` frames.
async fn handle_text(connection: &Connection, text: &str) {
    let outbox = &connection.handle.outbox;
    let op = match ClientOp::parse(text) {
        Ok(op) => op,
        Err((error, nonce)) => {
            outbox.push(error_frame(&error, nonce.as_deref()));
            return;
        }
    };
    tracing::debug!(op = op.name(), "client operation");
    let Some(user) = connection.app.accounts.identity(connection.user.id) else {
        connection.close.request(CLOSE_ACCOUNT_ENDED);
        return;
    };
    let hub = &connection.app.hub;
    // A write waits for an in-flight permit, and is dropped unacknowledged
    // when the socket started closing meanwhile; the client resends it.
    let reply = || async {
        let permit = connection.in_flight.clone().acquire_owned().await.ok();
        (!connection.closing.load(Ordering::Acquire)).then(|| Reply::Socket(outbox.clone(), permit))
    };

    let (result, nonce) = match op {
        ClientOp::Heartbeat => {
            outbox.push(Bytes::from_static(br#"{"op":"heartbeat_ack"}"#));
            (Ok(()), None)
        }
        ClientOp::Subscribe { channel, after, limit } => {
            let after = after.map(|rev| rev.0);
            (hub.subscribe(&user, &connection.handle, channel.0, after, page_limit(limit)), None)
        }
        ClientOp::Unsubscribe { channel } => {
            hub.unsubscribe(&connection.handle, channel.0);
            (Ok(()), None)
        }
        ClientOp::Send { channel, content, nonce } => {
            let Some(reply) = reply().await else { return };
            let result = hub.send(&user, channel.0, &content, &nonce, reply);
            (result.map(|_| ()), Some(nonce))
        }
        ClientOp::Edit { id, content } => {
            let Some(reply) = reply().await else { return };
            (hub.edit(&user, id.0, &content, reply).map(|_| ()), None)
        }
        ClientOp::Delete { id } => {
            let Some(reply) = reply().await else { return };
            (hub.delete(&user, id.0, reply).map(|_| ()), None)
        }
        ClientOp::Typing { channel } => (hub.typing(&user, channel.0), None),
        ClientOp::SetPresence { invisible } => {
            let result = crate::presence::set_invisible(&connection.app, user.id, invisible).await;
            (result.map(|_| ()), None)
        }
        ClientOp::History { channel, before, limit } => {
            let result = hub
                .history(&user, channel.0, before.map(|id| id.0), page_limit(limit))
                .map(|(messages, has_more)| {
                    outbox.push(encode_frame(&serde_json::json!({
                        "op": "history",
                        "channel": channel,
                        "messages": message_views(&messages),
                        "has_more": has_more,
                    })));
                });
            (result, None)
        }
    };
    if let Err(error) = result {
        outbox.push(protocol::error_frame(&error, nonce.as_deref()));
    }
}
