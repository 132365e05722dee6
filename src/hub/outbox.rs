//! The outbound side of one WebSocket connection, as seen by the hub.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

/// Close code for a connection that cannot keep up with its frames.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// Share of the outbound queue, as a fraction, above which droppable
/// frames (presence, typing) are skipped, keeping the rest of the queue for
/// message frames.
pub const DROPPABLE_FILL_LIMIT: f64 = 0.5;

/// Identifies one WebSocket connection for the life of the process.
pub type ConnId = u64;

/// A handle that queues frames for one connection without waiting.
///
/// The queue takes up to `--send-queue` frames and `--send-queue-mb` of bytes.
/// When a frame does not fit, it is not queued and the connection is closed
/// with [`CLOSE_TOO_SLOW`]: the client then resumes with `subscribe` after
/// its last rev, so nothing is skipped silently. A single frame larger than
/// the byte limit is queued when the queue is empty, so that the largest
/// reply always fits. Presence and typing frames go through
/// [`Outbox::push_droppable`] instead, which skips them once the queue is
/// [`DROPPABLE_FILL_LIMIT`] full, so they never cause that close.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The connection's id, for logs and subscriber maps.
    pub conn: ConnId,
    sender: mpsc::Sender<Bytes>,
    close: Arc<CloseSignal>,
    bytes: Arc<QueuedBytes>,
}

/// The bytes of the frames queued for one connection and not yet written.
#[derive(Debug)]
struct QueuedBytes {
    /// Bytes queued; the writer subtracts a frame's length once it is written.
    queued: AtomicUsize,
    /// The `--send-queue-mb` limit, in bytes.
    limit: usize,
    /// Wakes readers waiting in [`Outbox::wait_for_room`].
    room: Notify,
}

/// A one-shot request to close a connection with a given code.
#[derive(Debug, Default)]
pub struct CloseSignal {
    /// The close code requested first; 0 while none was requested.
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    /// Requests a close with `code`. The first request wins.
    pub fn request(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// Waits for a close request and returns its code.
    pub async fn requested(&self) -> u16 {
        loop {
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.notify.notified().await;
        }
    }

    /// The requested code, or `None` while no close was requested.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }
}

impl Outbox {
    /// Creates the outbox of a connection and the receiver its writer drains.
    pub fn new(conn: ConnId, capacity: usize, byte_limit: usize) -> (Outbox, mpsc::Receiver<Bytes>, Arc<CloseSignal>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let close = Arc::new(CloseSignal::default());
        let outbox = Outbox {
            conn,
            sender,
            close: close.clone(),
            bytes: Arc::new(QueuedBytes {
                queued: AtomicUsize::new(0),
                limit: byte_limit,
                room: Notify::new(),
            }),
        };
        (outbox, receiver, close)
    }

    /// Records that the writer wrote frames of `len` bytes in all, and wakes
    /// waiting readers once the queue is at most half full.
    pub fn written(&self, len: usize) {
        let before = self.bytes.queued.fetch_sub(len, Ordering::AcqRel);
        if before - len <= self.bytes.limit / 2 {
            self.bytes.room.notify_waiters();
        }
    }

    /// Waits until the queued frames take at most half of the byte limit.
    /// The reader calls it before each request, so that a client which
    /// sends requests without reading the replies stops being read instead
    /// of filling the server's memory.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.bytes.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.bytes.queued.load(Ordering::Acquire) <= self.bytes.limit / 2 || self.close.code().is_some() {
                return;
            }
            room.await;
        }
    }

    /// Queues a frame. Returns false when the frame was not queued: the
    /// queue was full, so the connection is being closed with
    /// [`CLOSE_TOO_SLOW`], or a close was already requested, or the
    /// connection has already ended.
    pub fn push(&self, frame: Bytes) -> bool {
        // Once a frame was dropped, no later frame may reach the client:
        // it resumes after the last rev it saw, which must come before the gap.
        if self.close.code().is_some() {
            return false;
        }
        let len = frame.len();
        let queued = self.bytes.queued.fetch_add(len, Ordering::AcqRel);
        if queued > 0 && queued + len > self.bytes.limit {
            self.bytes.queued.fetch_sub(len, Ordering::AcqRel);
            self.close_too_slow("outbound queue bytes over --send-queue-mb");
            return false;
        }
        match self.sender.try_send(frame) {
            Ok(()) => true,
            Err(error) => {
                self.bytes.queued.fetch_sub(len, Ordering::AcqRel);
                if matches!(error, mpsc::error::TrySendError::Full(_)) {
                    self.close_too_slow("outbound queue full");
                }
                false
            }
        }
    }

    fn close_too_slow(&self, reason: &str) {
        if self.close.code().is_none() {
            tracing::warn!(conn = self.conn, reason, "closing the slow connection with 4008");
        }
        self.close.request(CLOSE_TOO_SLOW);
        // A reader waiting for room would otherwise wait for a writer that stops.
        self.bytes.room.notify_waiters();
    }

    /// Queues a frame that the client can do without, such as presence or
    /// typing. Returns false, and closes nothing, when the queue is more
    /// than [`DROPPABLE_FILL_LIMIT`] full or the connection has ended: the
    /// frame is then dropped, and the caller decides whether to make up for
    /// it later.
    pub fn push_droppable(&self, frame: Bytes) -> bool {
        let queued = self.sender.max_capacity() - self.sender.capacity();
        if queued as f64 > self.sender.max_capacity() as f64 * DROPPABLE_FILL_LIMIT {
            return false;
        }
        let len = frame.len();
        if self.bytes.queued.load(Ordering::Acquire) + len > self.bytes.limit / 2 {
            return false;
        }
        self.bytes.queued.fetch_add(len, Ordering::AcqRel);
        if self.sender.try_send(frame).is_ok() {
            return true;
        }
        self.bytes.queued.fetch_sub(len, Ordering::AcqRel);
        false
    }

    /// Asks the connection to close with `code`.
    pub fn close(&self, code: u16) {
        self.close.request(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_over_byte_limit_closes_4008() {
        let (outbox, _frames, close) = Outbox::new(1, 1000, 100);
        assert!(outbox.push(Bytes::from(vec![b'a'; 60])), "the first frame fits");
        assert!(!outbox.push(Bytes::from(vec![b'b'; 60])), "120 bytes do not fit in 100");
        assert_eq!(close.code(), Some(CLOSE_TOO_SLOW), "the overflow closes the connection with 4008");
    }

    #[test]
    fn oversized_frame_fits_empty_queue() {
        let (outbox, _frames, close) = Outbox::new(1, 1000, 100);
        assert!(outbox.push(Bytes::from(vec![b'a'; 500])), "a frame over the limit fits an empty queue");
        assert_eq!(close.code(), None, "nothing is closed");
    }

    #[test]
    fn written_frames_free_bytes() {
        let (outbox, _frames, close) = Outbox::new(1, 1000, 100);
        assert!(outbox.push(Bytes::from(vec![b'a'; 60])));
        outbox.written(60);
        assert!(outbox.push(Bytes::from(vec![b'b'; 60])), "written bytes leave the queue");
        assert_eq!(close.code(), None, "nothing is closed");
    }

    #[tokio::test]
    async fn wait_for_room_until_half_written() {
        let (outbox, _frames, _close) = Outbox::new(1, 1000, 100);
        assert!(outbox.push(Bytes::from(vec![b'a'; 80])));
        let waiting = futures_util::FutureExt::now_or_never(outbox.wait_for_room()).is_none();
        assert!(waiting, "a reader waits while more than half of the bytes are queued");

        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        outbox.written(40);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the reader is woken once half the bytes are written")
            .unwrap();
    }

    #[test]
    fn droppable_frames_respect_byte_limit() {
        let (outbox, _frames, close) = Outbox::new(1, 1000, 100);
        assert!(outbox.push(Bytes::from(vec![b'a'; 40])));
        assert!(!outbox.push_droppable(Bytes::from(vec![b'b'; 20])), "60 bytes are over half of 100");
        assert_eq!(close.code(), None, "a skipped droppable frame closes nothing");
    }

    #[test]
    fn push_droppable_keeps_half_for_messages() {
        let (outbox, _frames, close) = Outbox::new(1, 16, 1 << 20);
        let mut accepted = 0;
        while outbox.push_droppable(Bytes::from_static(b"{}")) {
            accepted += 1;
            assert!(accepted <= 16, "droppable pushes stop before the queue is full");
        }
        assert_eq!(accepted, 9, "droppable frames fill the queue to just over half");
        for _ in accepted..16 {
            assert!(outbox.push(Bytes::from_static(b"{}")), "message frames still fit");
        }
        assert_eq!(close.code(), None, "skipping droppable frames closes nothing");
    }
}
