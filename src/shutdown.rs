//! The shutdown protocol.
//!
//! One future resolves on SIGINT or SIGTERM ([`signal`]). The server then
//! flips a [`Shutdown`] flag that every task watches: the accept loop stops,
//! each WebSocket gets a close frame with code 1001, long polls return, and
//! the writer drains its queue and flushes before the server logs
//! "shutdown complete".

use tokio::sync::watch;

/// A cloneable handle that tells tasks when the server is shutting down.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The sending side, owned by the server's run function.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Creates a trigger and the first handle watching it.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] handle that the server is stopping.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown has begun, at once if it already has.
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which only happens once the server stopped.
        let _ = self.receiver.wait_for(|stopping| *stopping).await;
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "failed to install the SIGTERM handler; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
    }
}
