//! The in-memory state of one channel: its subscribers and a window of its
//! most recent changes, which overlays the database.
//!
//! Every change enters the window before it is queued for the writer, so the
//! window holds every change that is not on disk yet. Reads merge the window
//! with the database; when both hold a message, the window's copy is newer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::{Message, Store, StoreError};

use super::outbox::{ConnId, Outbox};

/// Mutable state of a channel, behind the channel's mutex.
#[derive(Debug)]
pub struct ChannelState {
    /// Channel id.
    pub id: u64,
    /// Recent changes by rev, each message at its latest rev only.
    window: BTreeMap<u64, Arc<Message>>,
    /// Rev of each message in `window`, by message id.
    rev_of: HashMap<u64, u64>,
    /// Every change with a rev above `floor` is in `window`; changes at or
    /// below it are on disk.
    floor: u64,
    /// Highest rev of this channel known to be on disk.
    durable: u64,
    /// Changes kept in `window` once on disk (`--history-cache`). Changes
    /// not yet on disk stay regardless, bounded by the writer's queue.
    capacity: usize,
    /// Connections subscribed to live events.
    pub subscribers: HashMap<ConnId, Outbox>,
    /// Set when the channel was removed from the layout; no change or
    /// subscription is accepted after that.
    pub deleted: bool,
}

impl ChannelState {
    /// Creates the state of a channel whose newest stored rev is `stored_rev`.
    pub fn new(id: u64, stored_rev: u64, capacity: usize) -> Self {
        ChannelState {
            id,
            window: BTreeMap::new(),
            rev_of: HashMap::new(),
            floor: stored_rev,
            durable: stored_rev,
            capacity,
            subscribers: HashMap::new(),
            deleted: false,
        }
    }

    /// The current state of a message: from the window, else from disk.
    pub fn message(&self, store: &Store, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        if let Some(rev) = self.rev_of.get(&id) {
            return Ok(self.window.get(rev).cloned());
        }
        Ok(store.message(self.id, id)?.map(Arc::new))
    }

    /// Records a change: the message replaces its older rev in the window.
    pub fn apply(&mut self, message: Arc<Message>) {
        if let Some(old_rev) = self.rev_of.insert(message.id, message.rev) {
            self.window.remove(&old_rev);
        }
        self.window.insert(message.rev, message);
    }

    /// Records that changes up to `rev` are on disk and evicts the oldest
    /// durable changes beyond the window's capacity.
    pub fn mark_durable(&mut self, rev: u64) {
        self.durable = self.durable.max(rev);
        while self.window.len() > self.capacity {
            let Some((&oldest, _)) = self.window.first_key_value() else { break };
            if oldest > self.durable {
                break;
            }
            if let Some(message) = self.window.remove(&oldest) {
                self.rev_of.remove(&message.id);
            }
            self.floor = self.floor.max(oldest);
        }
    }

    /// Removes a change that failed to reach disk. Returns true when the
    /// window held that rev, false when a later change replaced it.
    pub fn retract(&mut self, message: &Message) -> bool {
        if self.window.get(&message.rev).is_none_or(|held| held.id != message.id) {
            return false;
        }
        self.window.remove(&message.rev);
        self.rev_of.remove(&message.id);
        true
    }

    /// The newest `limit` changes with a rev above `after`, oldest first,
    /// and whether older changes above `after` were left out.
    pub fn changes_newest(
        &self,
        store: &Store,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
        let mut newest_first: Vec<Arc<Message>> = self
            .window
            .range(after.saturating_add(1)..)
            .rev()
            .take(limit + 1)
            .map(|(_, message)| message.clone())
            .collect();
        if newest_first.len() <= limit && after < self.floor {
            let needed = limit + 1 - newest_first.len();
            let stored = store.changes_backward(self.id, after, self.floor, needed, |id| {
                self.rev_of.contains_key(&id)
            })?;
            newest_first.extend(stored.into_iter().map(Arc::new));
        }
        let gap = newest_first.len() > limit;
        newest_first.truncate(limit);
        newest_first.reverse();
        Ok((newest_first, gap))
    }

    /// The oldest `limit` changes with a rev above `after`, oldest first, and
    /// whether more follow.
    pub fn changes_oldest(
        &self,
        store: &Store,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
        let mut oldest_first: Vec<Arc<Message>> = Vec::new();
        if after < self.floor {
            let stored = store.changes_forward(self.id, after, self.floor, limit + 1, |id| {
                self.rev_of.contains_key(&id)
            })?;
            oldest_first.extend(stored.into_iter().map(Arc::new));
        }
        let room = (limit + 1).saturating_sub(oldest_first.len());
        oldest_first.extend(
            self.window
                .range(after.saturating_add(1)..)
                .take(room)
                .map(|(_, message)| message.clone()),
        );
        let has_more = oldest_first.len() > limit;
        oldest_first.truncate(limit);
        Ok((oldest_first, has_more))
    }

    /// The `limit` newest messages with an id below `before`, deleted ones
    /// left out, oldest first, and whether older messages exist.
    pub fn page_before(
        &self,
        store: &Store,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), StoreError> {
        let mut page: Vec<Arc<Message>> = self
            .window
            .values()
            .filter(|message| message.id < before && !message.deleted)
            .cloned()
            .collect();
        let stored = store.messages_before(self.id, before, limit + 1, |id| self.rev_of.contains_key(&id))?;
        page.extend(stored.into_iter().map(Arc::new));
        page.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        let has_more = page.len() > limit;
        page.truncate(limit);
        page.reverse();
        Ok((page, has_more))
    }
}

impl ChannelState {
    /// Returns whether the window contains a message with this id.
    pub fn holds(&self, id: u64) -> bool {
        self.rev_of.contains_key(&id)
    }
}
