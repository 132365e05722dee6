//! Durable state in one sled database.
//!
//! Trees, each keyed for range scans with big-endian integers:
//! - `messages`: (channel id, message id) to [`Message`], tombstones included.
//! - `revs`: (channel id, rev) to the message id. Each message has one entry, at its
//!   latest rev, so "everything that changed after rev X" is one range scan.
//! - `channel_of`: message id to its channel id, for edits and deletes
//!   that name only the message.
//! - `nonces`: (user id, nonce) to [`NonceRecord`], kept at least
//!   [`NONCE_RETENTION_MS`].
//! - `users`: user id to [`User`]; `usernames`: lowercased name to user id.
//! - `sessions`: SHA-256 of the token to [`Session`].
//! - `meta`: the layout and the id lease.
//!
//! Message changes reach disk only through the group-commit [`writer`]. The
//! rarer account and layout writes go straight to their trees and flush
//! before they return.
//!
//! Every write passes a gate ([`Store::begin_write`]) that a backup closes
//! while it dumps the records, so a backup sees each write whole or not at all. The
//! hourly sweeps of expired sessions and old idempotency records skip the
//! gate: each removes one record that no other record refers to.

pub mod records;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use records::{decode, encode, nonce_key, pair_key, split_pair_key, RecordError};
pub use records::{Category, Channel, Layout, Message, NonceRecord, PostPolicy, Role, Session, User};
use sled::Tree;

/// How long idempotency records are kept: 7 days, in milliseconds.
pub const NONCE_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

const LAYOUT_KEY: &[u8] = b"layout";
pub(crate) const LEASE_KEY: &[u8] = b"id_lease";

/// How long [`Store::reopen`] waits for reads that still hold the old
/// handles, in steps: at most 5 s.
const REOPEN_WAIT_STEPS: u32 = 500;
const REOPEN_WAIT_STEP: Duration = Duration::from_millis(10);

/// Free space that [`Store::reopen`] requires before it closes the failed
/// database, in bytes.
// NOTE: an estimate of what sled's recovery writes for a small database. A
// large one may need more, and then the reopen fails and is retried later.
const REOPEN_MIN_FREE_BYTES: u64 = 1 << 20;

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is in use by another Aura process: stop it or choose another --data-dir")]
    Locked { path: String },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Record(#[from] RecordError),
    #[error("writes are failing: {0}")]
    Unavailable(String),
    #[error("only {available} bytes are free on the data directory's filesystem, below the reserve of {reserve} bytes (--min-free-mb): free disk space")]
    DiskFull { available: u64, reserve: u64 },
}

/// The open database and its trees.
///
/// sled 0.34 fails every write after one I/O error until the database is
/// opened again, so the trees sit behind a lock that [`Store::reopen`]
/// swaps. Every write first passes the write gate ([`Store::begin_write`]),
/// which also keeps the disk reserve.
#[derive(Debug)]
pub struct Store {
    /// The data directory; the database is in its `db` subdirectory.
    dir: PathBuf,
    /// sled page cache capacity in bytes, kept for reopening.
    cache_bytes: u64,
    /// Bytes that must stay free on the data directory's filesystem: a
    /// write that starts with less free space fails before sled sees it.
    /// 0 turns the check off.
    min_free_bytes: u64,
    /// The open trees; `None` only after a reopen failed, until one succeeds.
    trees: RwLock<Option<Arc<Trees>>>,
    /// Every write holds the read side until its flush returns. A backup
    /// holds the write side while it dumps the records, so it never sees half a write.
    gate: tokio::sync::RwLock<()>,
    /// False after a write failed and until a later write succeeds; while
    /// false, new message changes are refused with `unavailable`.
    healthy: AtomicBool,
}

/// One opened sled database and its trees.
#[derive(Debug)]
struct Trees {
    db: sled::Db,
    messages: Tree,
    revs: Tree,
    channel_of: Tree,
    nonces: Tree,
    users: Tree,
    usernames: Tree,
    sessions: Tree,
    meta: Tree,
}

/// Opens or creates the database in `<dir>/db`.
///
/// sled's periodic background flush is turned off: the writer flushes each
/// batch itself before acknowledging it.
fn open_trees(dir: &Path, cache_bytes: u64) -> Result<Trees, StoreError> {
    let db = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|error| match error {
            sled::Error::Io(ref io) if is_lock_conflict(io) => StoreError::Locked {
                path: dir.display().to_string(),
            },
            other => StoreError::Sled(other),
        })?;
    Ok(Trees {
        messages: db.open_tree("messages")?,
        revs: db.open_tree("revs")?,
        channel_of: db.open_tree("channel_of")?,
        nonces: db.open_tree("nonces")?,
        users: db.open_tree("users")?,
        usernames: db.open_tree("usernames")?,
        sessions: db.open_tree("sessions")?,
        meta: db.open_tree("meta")?,
        db,
    })
}

impl Store {
    /// Opens or creates the database in `dir`, with a page cache of
    /// `cache_bytes` and no disk reserve.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let trees = open_trees(dir, cache_bytes)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            cache_bytes,
            min_free_bytes: 0,
            trees: RwLock::new(Some(Arc::new(trees))),
            gate: tokio::sync::RwLock::new(()),
            healthy: AtomicBool::new(true),
        })
    }

    /// Sets the free space, in bytes, that writes leave on the filesystem.
    pub fn with_min_free_bytes(mut self, bytes: u64) -> Store {
        self.min_free_bytes = bytes;
        self
    }

    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        self.trees
            .read()
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is closed after a failed reopen".into()))
    }

    /// The open sled database, for backups and checks.
    pub fn db(&self) -> Result<sled::Db, StoreError> {
        Ok(self.trees()?.db.clone())
    }

    /// Waits for the write gate, then checks the disk reserve. A write holds
    /// the returned guard until its flush returns.
    pub(crate) async fn begin_write(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, StoreError> {
        let guard = self.gate.read().await;
        self.check_free_space()?;
        Ok(guard)
    }

    /// Waits until no write is in progress and holds off new ones until the
    /// guard drops, so that the database can be copied as of one moment.
    pub async fn pause_writes(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Fails with [`StoreError::DiskFull`] when the data directory's
    /// filesystem has less than the reserve free.
    fn check_free_space(&self) -> Result<(), StoreError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        match fs2::available_space(&self.dir) {
            Ok(available) if available < self.min_free_bytes => Err(StoreError::DiskFull {
                available,
                reserve: self.min_free_bytes,
            }),
            Ok(_) => Ok(()),
            Err(error) => {
                // Writes go on: a failing statvfs says nothing about the disk.
                tracing::debug!(%error, dir = %self.dir.display(), "free space check failed");
                Ok(())
            }
        }
    }

    /// Closes the database and opens it again from disk, dropping whatever
    /// sled applied in memory but never flushed.
    ///
    /// sled 0.34 keeps failing every write after one I/O error (a full disk,
    /// say), so this is the way back short of a restart. The old handles are
    /// dropped first, because sled holds a file lock while any is open.
    /// While the reopen runs, and after it failed, reads and writes fail
    /// with [`StoreError::Unavailable`].
    pub async fn reopen(&self) -> Result<(), StoreError> {
        let _paused = self.gate.write().await;
        // Opening writes to disk, so a full disk would leave no database to
        // read from; the old, failed one still serves reads meanwhile.
        let needed = self.min_free_bytes.max(REOPEN_MIN_FREE_BYTES);
        match fs2::available_space(&self.dir) {
            Ok(available) if available < needed => {
                return Err(StoreError::DiskFull { available, reserve: needed });
            }
            _ => {}
        }
        let old = self.trees.write().take();
        if let Some(old) = old {
            // Readers hold a clone only for the length of one read.
            for _ in 0..REOPEN_WAIT_STEPS {
                if Arc::strong_count(&old) == 1 {
                    break;
                }
                tokio::time::sleep(REOPEN_WAIT_STEP).await;
            }
            drop(old);
        }
        let (dir, cache_bytes) = (self.dir.clone(), self.cache_bytes);
        let trees = tokio::task::spawn_blocking(move || open_trees(&dir, cache_bytes))
            .await
            .map_err(|error| StoreError::Unavailable(format!("reopen task failed: {error}")))??;
        *self.trees.write() = Some(Arc::new(trees));
        tracing::info!(dir = %self.dir.display(), "database reopened");
        Ok(())
    }

    /// Whether the last write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }

    /// Flushes everything written so far to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // sled 0.34's flush_async waits on its own I/O thread pool, and seven
        // concurrent calls can occupy every thread of that pool and hang for
        // good. A blocking flush on tokio's blocking pool cannot starve it.
        let db = self.trees()?.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|error| StoreError::Unavailable(format!("flush task failed: {error}")))??;
        Ok(())
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.trees()?.db.size_on_disk()?)
    }

    /// The id lease of the previous run, or 0 for a new database.
    pub fn lease(&self) -> Result<u64, StoreError> {
        Ok(self.trees()?
            .meta
            .get(LEASE_KEY)?
            .map(|bytes| decode::<u64>(&bytes))
            .transpose()?
            .unwrap_or(0))
    }

    /// Writes a new id lease and flushes it.
    pub async fn persist_lease(&self, lease: u64) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        self.trees()?.meta.insert(LEASE_KEY, encode(&lease))?;
        self.flush().await
    }

    /// The stored layout, if the community was set up.
    pub fn layout(&self) -> Result<Option<Layout>, StoreError> {
        Ok(self.trees()?.meta.get(LAYOUT_KEY)?.map(|bytes| decode(&bytes)).transpose()?)
    }

    /// Replaces the layout and flushes it.
    pub async fn put_layout(&self, layout: &Layout) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        self.trees()?.meta.insert(LAYOUT_KEY, encode(layout))?;
        self.flush().await
    }

    /// One message by channel and id, tombstones included.
    pub fn message(&self, channel: u64, id: u64) -> Result<Option<Message>, StoreError> {
        Ok(self.trees()?
            .messages
            .get(pair_key(channel, id))?
            .map(|bytes| decode(&bytes))
            .transpose()?)
    }

    /// The channel of a stored message.
    pub fn message_channel(&self, id: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.trees()?
            .channel_of
            .get(id.to_be_bytes())?
            .map(|bytes| decode(&bytes))
            .transpose()?)
    }

    /// The highest rev stored for a channel, or 0 when it has no messages.
    pub fn channel_max_rev(&self, channel: u64) -> Result<u64, StoreError> {
        let last = self.trees()?.revs.scan_prefix(channel.to_be_bytes()).next_back().transpose()?;
        Ok(last
            .and_then(|(key, _)| split_pair_key(&key))
            .map_or(0, |(_, rev)| rev))
    }

    /// Changes of a channel with `after < rev <= upto`, oldest first, at most
    /// `limit`, skipping messages for which `skip(id)` is true.
    pub fn changes_forward(
        &self,
        channel: u64,
        after: u64,
        upto: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<Vec<Message>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let range = self.trees()?.revs.range(pair_key(channel, after + 1)..=pair_key(channel, upto));
        self.collect_changes(channel, range, limit, skip)
    }

    /// Changes of a channel with `after < rev <= upto`, newest first, at most
    /// `limit`, skipping messages for which `skip(id)` is true.
    pub fn changes_backward(
        &self,
        channel: u64,
        after: u64,
        upto: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<Vec<Message>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let range = self.trees()?.revs.range(pair_key(channel, after + 1)..=pair_key(channel, upto));
        self.collect_changes(channel, range.rev(), limit, skip)
    }

    /// Loads the messages that rev index entries point to. An entry whose
    /// message has since moved to another rev is stale and skipped.
    fn collect_changes(
        &self,
        channel: u64,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<Vec<Message>, StoreError> {
        let mut found = Vec::new();
        for entry in entries {
            if found.len() >= limit {
                break;
            }
            let (key, id_bytes) = entry?;
            let Some((_, rev)) = split_pair_key(&key) else { continue };
            let id = decode::<u64>(&id_bytes)?;
            if skip(id) {
                continue;
            }
            match self.message(channel, id)? {
                Some(message) if message.rev == rev => found.push(message),
                _ => continue,
            }
        }
        Ok(found)
    }

    /// Messages of a channel with id below `before`, newest first, at most
    /// `limit`, not deleted, skipping ids for which `skip(id)` is true.
    pub fn messages_before(
        &self,
        channel: u64,
        before: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<Vec<Message>, StoreError> {
        let mut found = Vec::new();
        let range = self.trees()?.messages.range(pair_key(channel, 0)..pair_key(channel, before));
        for entry in range.rev() {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry?;
            let Some((_, id)) = split_pair_key(&key) else { continue };
            if skip(id) {
                continue;
            }
            let message: Message = decode(&bytes)?;
            if !message.deleted {
                found.push(message);
            }
        }
        Ok(found)
    }

    /// The idempotency record of a user's nonce.
    pub fn nonce(&self, user: u64, nonce: &str) -> Result<Option<NonceRecord>, StoreError> {
        Ok(self.trees()?
            .nonces
            .get(nonce_key(user, nonce))?
            .map(|bytes| decode(&bytes))
            .transpose()?)
    }

    /// Removes idempotency records created before `cutoff_ms` and returns how many.
    pub fn sweep_nonces(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let nonces = self.trees()?.nonces.clone();
        let mut removed = 0;
        for entry in nonces.iter() {
            let (key, bytes) = entry?;
            let record: NonceRecord = decode(&bytes)?;
            if record.created_ms < cutoff_ms {
                nonces.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A user by id.
    pub fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        Ok(self.trees()?
            .users
            .get(id.to_be_bytes())?
            .map(|bytes| decode(&bytes))
            .transpose()?)
    }

    /// A user by name, without regard to case.
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let Some(id) = self.trees()?.usernames.get(name.to_ascii_lowercase())? else {
            return Ok(None);
        };
        self.user(decode::<u64>(&id)?)
    }

    /// Every user, in id order.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.trees()?.users
            .iter()
            .values()
            .map(|bytes| Ok(decode(&bytes?)?))
            .collect()
    }

    /// Inserts a new user and flushes. Returns false, writing nothing, when
    /// the name is taken without regard to case.
    pub async fn insert_user(&self, user: &User) -> Result<bool, StoreError> {
        let _writing = self.begin_write().await?;
        let name_key = user.name.to_ascii_lowercase();
        let claimed = self.trees()?
            .usernames
            .compare_and_swap(name_key.as_bytes(), None::<&[u8]>, Some(encode(&user.id)))?;
        if claimed.is_err() {
            return Ok(false);
        }
        self.trees()?.users.insert(user.id.to_be_bytes(), encode(user))?;
        self.flush().await?;
        Ok(true)
    }

    /// Replaces a user record and flushes. The name must not change.
    pub async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        self.trees()?.users.insert(user.id.to_be_bytes(), encode(user))?;
        self.flush().await
    }

    /// Removes a user, their name and their sessions, and flushes.
    /// Their messages stay, with the author name they were sent under.
    pub async fn delete_user(&self, user: &User) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        let trees = self.trees()?;
        self.remove_sessions_of(user.id)?;
        trees.usernames.remove(user.name.to_ascii_lowercase())?;
        trees.users.remove(user.id.to_be_bytes())?;
        self.flush().await
    }

    /// Removes every session of a user and returns how many; the caller flushes.
    pub fn remove_sessions_of(&self, user: u64) -> Result<usize, StoreError> {
        let sessions = self.trees()?.sessions.clone();
        let mut removed = 0;
        for entry in sessions.iter() {
            let (key, bytes) = entry?;
            let session: Session = decode(&bytes)?;
            if session.user == user {
                sessions.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every message of a channel with its index entries, and
    /// flushes. Returns how many messages were removed.
    pub async fn delete_channel_messages(&self, channel: u64) -> Result<usize, StoreError> {
        let _writing = self.begin_write().await?;
        let trees = self.trees()?;
        let prefix = channel.to_be_bytes();
        let mut removed = 0;
        for entry in trees.messages.scan_prefix(prefix) {
            let (key, _) = entry?;
            if let Some((_, id)) = split_pair_key(&key) {
                trees.channel_of.remove(id.to_be_bytes())?;
            }
            trees.messages.remove(key)?;
            removed += 1;
        }
        for entry in trees.revs.scan_prefix(prefix) {
            let (key, _) = entry?;
            trees.revs.remove(key)?;
        }
        self.flush().await?;
        Ok(removed)
    }

    /// A session by token hash.
    pub fn session(&self, token_hash: &[u8]) -> Result<Option<Session>, StoreError> {
        Ok(self.trees()?
            .sessions
            .get(token_hash)?
            .map(|bytes| decode(&bytes))
            .transpose()?)
    }

    /// Stores a session and flushes.
    pub async fn put_session(&self, token_hash: &[u8], session: &Session) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        self.trees()?.sessions.insert(token_hash, encode(session))?;
        self.flush().await
    }

    /// Removes a session and flushes.
    pub async fn remove_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        let _writing = self.begin_write().await?;
        self.trees()?.sessions.remove(token_hash)?;
        self.flush().await
    }

    /// Removes sessions that expired before `now_ms` and returns how many.
    pub fn sweep_sessions(&self, now_ms: u64) -> Result<usize, StoreError> {
        let sessions = self.trees()?.sessions.clone();
        let mut removed = 0;
        for entry in sessions.iter() {
            let (key, bytes) = entry?;
            let session: Session = decode(&bytes)?;
            if session.expires_ms <= now_ms {
                sessions.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Counts of stored records, for the start-up log: (messages, users),
    /// or zeros while the database is closed.
    pub fn counts(&self) -> (usize, usize) {
        self.trees()
            .map(|trees| (trees.messages.len(), trees.users.len()))
            .unwrap_or((0, 0))
    }
}

/// Whether an I/O error from opening sled means another process holds the lock.
fn is_lock_conflict(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
        || error.raw_os_error() == Some(11)
        || error.to_string().contains("lock")
}
