//! The outbound side of one WebSocket connection, as seen by the hub.

use std::sync::atomic::{AtomicU16, Ordering};
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
/// The queue holds `--send-queue` frames. When it is full the frame is not
/// queued and the connection is closed with [`CLOSE_TOO_SLOW`]: the client
/// then resumes with `subscribe` after its last rev, so nothing is skipped
/// silently. Presence and typing frames go through
/// [`Outbox::push_droppable`] instead, which skips them once the queue is
/// [`DROPPABLE_FILL_LIMIT`] full, so they never cause that close.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The connection's id, for logs and subscriber maps.
    pub conn: ConnId,
    sender: mpsc::Sender<Bytes>,
    close: Arc<CloseSignal>,
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
    pub fn new(conn: ConnId, capacity: usize) -> (Outbox, mpsc::Receiver<Bytes>, Arc<CloseSignal>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let close = Arc::new(CloseSignal::default());
        let outbox = Outbox {
            conn,
            sender,
            close: close.clone(),
        };
        (outbox, receiver, close)
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
        match self.sender.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close.code().is_none() {
                    tracing::warn!(conn = self.conn, "outbound queue full; closing the slow connection with 4008");
                }
                self.close.request(CLOSE_TOO_SLOW);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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
        self.sender.try_send(frame).is_ok()
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
    fn push_droppable_keeps_half_for_messages() {
        let (outbox, _frames, close) = Outbox::new(1, 16);
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
