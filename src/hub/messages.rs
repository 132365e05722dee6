//! Sends, edits and deletes: the message write path.

use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::{storage_error, Hub, Identity, Outbox};
use crate::error::{ApiError, ErrorCode};
use crate::ids::now_ms;
use crate::protocol::{self, ack_frame, error_frame};
use crate::store::writer::{Change, Completion, QueueError, WriteRequest};
use crate::store::{Message, NonceRecord, PostPolicy, Role, StoreError};

/// The destination of a write's outcome once it is on disk.
pub enum Reply {
    /// A WebSocket connection: an `ack` frame for a send, or an `error`
    /// frame with code `unavailable` when the write failed. The permit, if
    /// any, counts the write against the connection's limit of writes in
    /// flight and is released once the outcome is queued.
    Socket(Outbox, Option<OwnedSemaphorePermit>),
    /// An HTTP handler waiting to respond.
    Http(oneshot::Sender<Result<(), ApiError>>),
}

/// The result of a send.
#[derive(Debug)]
pub enum SendOutcome {
    /// A new message, broadcast and queued for disk.
    Created(Arc<Message>),
    /// The user already sent this nonce: the original message, created nothing.
    Duplicate(Arc<Message>),
}

impl Hub {
    /// Sends a message: validates and authorizes it, gives it an id,
    /// broadcasts it and queues it for disk. `reply` is told once it is on
    /// disk. A nonce the user already sent returns the original message.
    pub fn send(
        &self,
        user: &Identity,
        channel: u64,
        content: &str,
        nonce: &str,
        reply: Reply,
    ) -> Result<SendOutcome, ApiError> {
        let started = std::time::Instant::now();
        protocol::validate_nonce(nonce)?;
        let content = self.validate_content(content)?;
        let hub = self.readable_channel(user, channel)?;

        // The shard stays locked until the send is queued, so two sends of
        // one nonce cannot both create a message. A repeated nonce returns
        // its original before the mute and rate checks, because a client
        // that resends an unacknowledged message must learn that it was stored.
        let mut pending = self.nonce_shard(user.id).lock();
        if let Some(original) = self.find_nonce(&pending, user.id, nonce)? {
            self.queue_barrier(reply, Some((nonce, &original)))?;
            return Ok(SendOutcome::Duplicate(original));
        }
        self.check_may_post(user, channel)?;
        self.check_healthy()?;
        self.take_send_token(user.id)?;

        let mut state = hub.state.lock();
        if state.deleted {
            return Err(ApiError::channel_not_found());
        }
        let id = self.sequencer.next();
        let message = Arc::new(Message {
            id,
            rev: id,
            channel,
            author_id: user.id,
            author_name: user.name.clone(),
            content,
            ts: now_ms(),
            edited_ts: None,
            nonce: Some(nonce.to_string()),
            deleted: false,
        });
        let record = NonceRecord {
            channel,
            message: id,
            created_ms: message.ts,
        };
        let change = Change {
            message: message.clone(),
            replaced_rev: None,
            nonce: Some((user.id, nonce.to_string(), record)),
        };
        self.queue(change, completion(reply, Some((nonce, &message))))?;
        self.publish(&mut state, &hub.latest, message.clone());
        drop(state);
        self.metrics.messages_received.inc();
        self.metrics.fanout_seconds.observe_duration(started.elapsed());

        pending.insert((user.id, nonce.to_string()), (channel, id));
        Ok(SendOutcome::Created(message))
    }

    /// Edits a message's content. Only its author may.
    pub fn edit(&self, user: &Identity, id: u64, content: &str, reply: Reply) -> Result<Arc<Message>, ApiError> {
        let content = self.validate_content(content)?;
        // An edit publishes new text, so a mute blocks it like a send.
        if user.is_muted() {
            return Err(ApiError::forbidden("you are muted and may not edit until the mute ends"));
        }
        self.change_message(user, id, reply, |current| {
            if current.author_id != user.id {
                return Err(ApiError::forbidden("only the author may edit a message"));
            }
            Ok(Message {
                content,
                edited_ts: Some(now_ms()),
                ..current.clone()
            })
        })
    }

    /// Deletes a message, keeping a tombstone. Its author, a moderator or an admin may.
    pub fn delete(&self, user: &Identity, id: u64, reply: Reply) -> Result<Arc<Message>, ApiError> {
        self.change_message(user, id, reply, |current| {
            if current.author_id != user.id && user.role < Role::Moderator {
                return Err(ApiError::forbidden("only the author, a moderator or an admin may delete a message"));
            }
            Ok(Message {
                content: String::new(),
                deleted: true,
                ..current.clone()
            })
        })
    }

    /// Applies `change` to the current version of message `id` under its
    /// channel's lock, with a new rev, then broadcasts and queues it.
    fn change_message(
        &self,
        user: &Identity,
        id: u64,
        reply: Reply,
        change: impl FnOnce(&Message) -> Result<Message, ApiError>,
    ) -> Result<Arc<Message>, ApiError> {
        let not_found = || ApiError::not_found("message not found");
        let channel = self.locate_message(id)?.ok_or_else(not_found)?;
        let hub = self.readable_channel(user, channel).map_err(|_| not_found())?;
        self.check_healthy()?;

        let mut state = hub.state.lock();
        if state.deleted {
            return Err(not_found());
        }
        let current = state
            .message(&self.store, id)
            .map_err(storage_error)?
            .filter(|message| !message.deleted)
            .ok_or_else(not_found)?;
        let mut changed = change(&current)?;
        changed.rev = self.sequencer.next();
        let changed = Arc::new(changed);

        let request = Change {
            message: changed.clone(),
            replaced_rev: Some(current.rev),
            nonce: None,
        };
        self.queue(request, completion(reply, None))?;
        self.publish(&mut state, &hub.latest, changed.clone());
        Ok(changed)
    }

    /// Enters a change into the channel's window and broadcasts it.
    fn publish(
        &self,
        state: &mut super::ChannelState,
        latest: &tokio::sync::watch::Sender<u64>,
        message: Arc<Message>,
    ) {
        let frame = protocol::message_frame(&message);
        let rev = message.rev;
        state.apply(message);
        Self::broadcast(state, &frame);
        self.metrics.messages_delivered.inc_by(state.subscribers.len() as u64);
        latest.send_replace(rev);
    }

    /// Finds the channel of a message, on disk or still in a window.
    fn locate_message(&self, id: u64) -> Result<Option<u64>, ApiError> {
        if let Some(channel) = self.store.message_channel(id).map_err(storage_error)? {
            return Ok(Some(channel));
        }
        let channels = self.channels.read();
        let pending = channels
            .iter()
            .find(|(_, hub)| hub.state.lock().holds(id))
            .map(|(&channel, _)| channel);
        Ok(pending)
    }

    /// Returns the message an earlier send of this nonce created, if any.
    fn find_nonce(
        &self,
        pending: &super::PendingNonces,
        user: u64,
        nonce: &str,
    ) -> Result<Option<Arc<Message>>, ApiError> {
        let target = match pending.get(&(user, nonce.to_string())) {
            Some(&(channel, id)) => Some((channel, id)),
            None => self
                .store
                .nonce(user, nonce)
                .map_err(storage_error)?
                .map(|record| (record.channel, record.message)),
        };
        let Some((channel, id)) = target else { return Ok(None) };

        let stored = match self.channels.read().get(&channel) {
            Some(hub) => hub.state.lock().message(&self.store, id),
            None => self.store.message(channel, id).map(|found| found.map(Arc::new)),
        };
        match stored.map_err(storage_error)? {
            Some(message) => Ok(Some(message)),
            // The channel was deleted with its messages; the nonce is spent.
            None => Err(ApiError::not_found("the message sent with this nonce no longer exists")),
        }
    }

    /// Queues a barrier that replies once everything queued before it is on
    /// disk, for a repeated nonce whose original may not be durable yet.
    fn queue_barrier(&self, reply: Reply, original: Option<(&str, &Arc<Message>)>) -> Result<(), ApiError> {
        if let (Reply::Socket(outbox, _), Some((_, message))) = (&reply, original) {
            outbox.push(protocol::message_frame(message));
        }
        let request = WriteRequest {
            change: None,
            completion: Some(completion(reply, original)),
        };
        self.writer().try_queue(request).map_err(queue_error)
    }

    fn queue(&self, change: Change, completion: Completion) -> Result<(), ApiError> {
        let request = WriteRequest {
            change: Some(change),
            completion: Some(completion),
        };
        self.writer().try_queue(request).map_err(queue_error)
    }

    fn check_healthy(&self) -> Result<(), ApiError> {
        if self.store.is_healthy() {
            Ok(())
        } else {
            Err(ApiError::unavailable())
        }
    }

    fn check_may_post(&self, user: &Identity, channel: u64) -> Result<(), ApiError> {
        let layout = self.layout();
        let Some(channel) = layout.channel(channel) else {
            return Err(ApiError::channel_not_found());
        };
        if channel.post == PostPolicy::Admins && user.role != Role::Admin {
            return Err(ApiError::forbidden("only admins may post in this channel"));
        }
        if user.is_muted() {
            return Err(ApiError::forbidden("you are muted and may not send until the mute ends"));
        }
        Ok(())
    }

    /// Trims the content and checks its length and characters.
    fn validate_content(&self, content: &str) -> Result<String, ApiError> {
        let trimmed = content.trim();
        if trimmed.is_empty() {
            return Err(ApiError::bad_request("message is empty"));
        }
        if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ApiError::bad_request(
                "message contains a control character: only newline and tab are allowed",
            ));
        }
        let chars = trimmed.chars().count();
        let max = self.config.max_message_chars;
        if chars > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("message has {chars} characters, the maximum is {max}"),
            ));
        }
        Ok(trimmed.to_string())
    }
}

/// Builds the writer completion that delivers the outcome to `reply`.
/// `ack` carries the nonce and message of a send, whose socket gets an ack.
fn completion(reply: Reply, ack: Option<(&str, &Arc<Message>)>) -> Completion {
    let ack = ack.map(|(nonce, message)| (nonce.to_string(), message.id, message.rev));
    Box::new(move |result: Result<(), StoreError>| match reply {
        Reply::Socket(outbox, _permit) => {
            let nonce = ack.as_ref().map(|(nonce, _, _)| nonce.as_str());
            match (&result, &ack) {
                (Ok(()), Some((nonce, id, rev))) => {
                    outbox.push(ack_frame(nonce, *id, *rev));
                }
                (Ok(()), None) => {}
                (Err(_), _) => {
                    outbox.push(error_frame(&ApiError::unavailable(), nonce));
                }
            }
        }
        Reply::Http(sender) => {
            let _ = sender.send(result.map_err(|_| ApiError::unavailable()));
        }
    })
}

fn queue_error(error: QueueError) -> ApiError {
    tracing::warn!(%error, "write rejected: the writer queue is full or stopped");
    ApiError::new(ErrorCode::Unavailable, format!("server is busy ({error}): retry shortly"))
}
