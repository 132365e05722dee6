//! The group-commit writer: the only task that writes message changes.
//!
//! Requests queue in a bounded channel ([`WRITE_QUEUE`]). The writer takes
//! everything queued so far (at most [`MAX_BATCH`]), applies it to the
//! `messages`, `revs`, `nonces` and `meta` trees in one sled transaction,
//! flushes, and only then completes each request. While one flush runs, new
//! requests gather for the next batch, so the cost of a flush is shared by
//! every message in it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use super::records::{encode, nonce_key, pair_key};
use super::{Message, NonceRecord, Store, StoreError, Trees};
use crate::ids::Sequencer;
use crate::metrics::Metrics;

/// Capacity of the writer's queue, in requests. When it is full, new
/// message changes are refused with `unavailable` and nothing is broadcast.
pub const WRITE_QUEUE: usize = 65_536;

/// Maximum requests committed in one batch.
pub const MAX_BATCH: usize = 8_192;

/// Longest wait between attempts to write again after a failure.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// One change to a message, as the hub already applied it in memory.
#[derive(Debug)]
pub struct Change {
    /// The message after the change.
    pub message: Arc<Message>,
    /// The rev the message had before, whose index entry is removed.
    pub replaced_rev: Option<u64>,
    /// The idempotency record to keep, for a new message sent with a nonce.
    pub nonce: Option<(u64, String, NonceRecord)>,
}

/// Runs once the request's batch is on disk, or failed.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A queued write: a change, or `None` for a barrier that completes once
/// everything queued before it is on disk.
pub struct WriteRequest {
    pub change: Option<Change>,
    pub completion: Option<Completion>,
}

/// Told about each batch after it committed or failed.
pub trait CommitListener: Send + Sync + 'static {
    /// The changes are on disk.
    fn committed(&self, changes: &[Arc<Message>]);
    /// The changes could not be written and will not be.
    fn failed(&self, changes: &[Arc<Message>]);
}

/// The sending side of the writer's queue.
#[derive(Clone)]
pub struct WriterHandle {
    sender: mpsc::Sender<WriteRequest>,
}

/// Errors when queueing a write.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("write queue is full ({WRITE_QUEUE} requests)")]
    Full,
    #[error("writer has stopped")]
    Stopped,
}

impl WriterHandle {
    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Queues a request without waiting.
    pub fn try_queue(&self, request: WriteRequest) -> Result<(), QueueError> {
        self.sender.try_send(request).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
        })
    }
}

/// One batch of changes, split by the tree each write goes to.
#[derive(Default)]
struct TreeBatches {
    messages: sled::Batch,
    revs: sled::Batch,
    channel_of: sled::Batch,
    nonces: sled::Batch,
    meta: sled::Batch,
}

impl TreeBatches {
    fn of(changes: &[Change]) -> TreeBatches {
        let mut batches = TreeBatches::default();
        for change in changes {
            let message = &change.message;
            if let Some(old) = change.replaced_rev {
                batches.revs.remove(&pair_key(message.channel, old));
            }
            batches.revs.insert(&pair_key(message.channel, message.rev), encode(&message.id));
            batches.messages.insert(&pair_key(message.channel, message.id), encode(message.as_ref()));
            if change.replaced_rev.is_none() {
                batches.channel_of.insert(&message.id.to_be_bytes(), encode(&message.channel));
            }
            if let Some((user, nonce, record)) = &change.nonce {
                batches.nonces.insert(nonce_key(*user, nonce), encode(record));
            }
        }
        batches
    }

    /// Applies every batch in one sled transaction, so that a crash keeps
    /// all of it or none, then flushes. Blocks; returns the flush's duration.
    fn apply_and_flush(self, trees: &Trees) -> Result<Duration, StoreError> {
        (&trees.messages, &trees.revs, &trees.channel_of, &trees.nonces, &trees.meta)
            .transaction(|(messages, revs, channel_of, nonces, meta)| {
                messages.apply_batch(&self.messages)?;
                revs.apply_batch(&self.revs)?;
                channel_of.apply_batch(&self.channel_of)?;
                nonces.apply_batch(&self.nonces)?;
                meta.apply_batch(&self.meta)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                TransactionError::Storage(error) => StoreError::Sled(error),
                TransactionError::Abort(()) => StoreError::Unavailable("transaction aborted".into()),
            })?;
        let flush_started = Instant::now();
        trees.db.flush()?;
        Ok(flush_started.elapsed())
    }
}

/// The writer task's state.
pub struct Writer {
    store: Arc<Store>,
    sequencer: Arc<Sequencer>,
    receiver: mpsc::Receiver<WriteRequest>,
    listener: Arc<dyn CommitListener>,
    metrics: Arc<Metrics>,
    /// Set when a write failed inside sled, which then fails every later
    /// write until the database is reopened; a refusal for lack of free
    /// space leaves it unset.
    reopen_needed: bool,
}

/// Creates the writer and the handle that queues to it.
pub fn writer(
    store: Arc<Store>,
    sequencer: Arc<Sequencer>,
    listener: Arc<dyn CommitListener>,
    metrics: Arc<Metrics>,
) -> (Writer, WriterHandle) {
    let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
    let writer = Writer {
        store,
        sequencer,
        receiver,
        listener,
        metrics,
        reopen_needed: false,
    };
    (writer, WriterHandle { sender })
}

impl Writer {
    /// Commits batches until `stop` resolves, then drains the queue, commits
    /// what was left and returns after the final flush.
    pub async fn run(mut self, stop: oneshot::Receiver<()>) {
        let mut stop = std::pin::pin!(stop);
        let mut retry_delay = Duration::from_millis(250);
        loop {
            let first = if self.store.is_healthy() {
                tokio::select! {
                    request = self.receiver.recv() => request,
                    _ = &mut stop => break,
                }
            } else {
                // After a failure nothing new is queued, so probe the disk
                // now and then until a write succeeds again.
                tokio::select! {
                    request = self.receiver.recv() => request,
                    _ = tokio::time::sleep(retry_delay) => {
                        retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                        self.probe().await;
                        continue;
                    }
                    _ = &mut stop => break,
                }
            };
            let Some(first) = first else { break };
            self.commit_queued(first).await;
            if self.store.is_healthy() {
                retry_delay = Duration::from_millis(250);
            }
        }

        self.receiver.close();
        while let Some(first) = self.receiver.recv().await {
            self.commit_queued(first).await;
        }
        if let Err(error) = self.store.flush().await {
            tracing::error!(%error, "final flush failed");
        }
        tracing::info!("writer drained and flushed");
    }

    /// Commits `first` and everything queued behind it, up to [`MAX_BATCH`].
    async fn commit_queued(&mut self, first: WriteRequest) {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }

        let mut changes = Vec::new();
        let mut completions = Vec::new();
        for request in batch {
            changes.extend(request.change);
            completions.extend(request.completion);
        }

        let result = self.commit(&changes).await;
        let messages: Vec<Arc<Message>> = changes.iter().map(|change| change.message.clone()).collect();
        match &result {
            Ok(()) => {
                if !self.store.is_healthy() {
                    tracing::info!("writes succeed again");
                }
                self.store.set_healthy(true);
                self.listener.committed(&messages);
            }
            Err(error) => {
                tracing::error!(%error, changes = changes.len(), "write batch failed; refusing writes until the disk recovers");
                self.metrics.write_failures.inc();
                self.reopen_needed |= !matches!(error, StoreError::DiskFull { .. });
                self.store.set_healthy(false);
                self.listener.failed(&messages);
            }
        }
        for completion in completions {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(StoreError::Unavailable(error.to_string())),
            };
            completion(outcome);
        }
    }

    /// Applies the changes in one transaction, renewing the id lease when it
    /// runs short, and flushes.
    ///
    /// The transaction and the flush run on tokio's blocking pool: a batch of
    /// thousands of changes takes milliseconds of CPU, which would otherwise
    /// stop one runtime worker from writing to sockets meanwhile.
    ///
    /// NOTE: a sled 0.34 transaction holds a process-wide write lock, and
    /// every other read of the database waits for it, including the nonce
    /// lookup of a send on a runtime worker. Applying a batch in chunks of 64
    /// changes did not change acks per second in the durable benchmark.
    async fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut batches = TreeBatches::of(changes);
        let lease = self.sequencer.lease_to_renew();
        if let Some(lease) = lease {
            batches.meta.insert(super::LEASE_KEY, encode(&lease));
        }

        let _writing = self.store.begin_write().await?;
        let trees = self.store.trees()?;
        let flush_time = tokio::task::spawn_blocking(move || batches.apply_and_flush(&trees))
            .await
            .map_err(|error| StoreError::Unavailable(format!("write task failed: {error}")))??;
        self.metrics.flush_seconds.observe_duration(flush_time);
        self.metrics.write_batch_size.observe(changes.len() as u64);

        if let Some(lease) = lease {
            self.sequencer.lease_persisted(lease);
        }
        Ok(())
    }

    /// Reopens the database when sled failed, then writes and flushes the
    /// lease alone, to learn whether the disk works again.
    async fn probe(&mut self) {
        if self.reopen_needed {
            if let Err(error) = self.store.reopen().await {
                tracing::warn!(%error, "database cannot be reopened yet");
                return;
            }
            self.reopen_needed = false;
        }
        let lease = self.sequencer.last() + crate::ids::LEASE_SPAN;
        match self.store.persist_lease(lease).await {
            Ok(()) => {
                self.sequencer.lease_persisted(lease);
                self.store.set_healthy(true);
                tracing::info!("writes succeed again");
            }
            Err(error) => {
                self.reopen_needed |= !matches!(error, StoreError::DiskFull { .. });
                tracing::warn!(%error, "disk still failing");
            }
        }
    }
}
