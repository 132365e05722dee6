//! Records stored in sled and their encoding.
//!
//! Each value is one format-version byte followed by bincode 1.3 with varint
//! integers. Decoding rejects values over [`MAX_RECORD_BYTES`], so a corrupt
//! length prefix cannot allocate without bound. Keys are big-endian so that
//! sled's byte order is numeric order and prefix scans are range scans.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Format version written as the first byte of every value.
pub const FORMAT_VERSION: u8 = 1;

/// Largest value that decoding accepts, in bytes.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Errors while decoding a stored value.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error("record has format version {0}, expected {FORMAT_VERSION}: upgrade Aura to read it")]
    Version(u8),
    #[error("record does not decode: {0}")]
    Decode(#[from] bincode::Error),
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_RECORD_BYTES)
}

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    codec()
        .serialize_into(&mut bytes, record)
        .expect("records serialize: they contain no maps with non-string keys and fit the limit");
    bytes
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT_VERSION, body)) => Ok(codec().deserialize(body)?),
        Some((&other, _)) => Err(RecordError::Version(other)),
    }
}

/// A key made of two big-endian u64s, such as (channel id, message id).
pub fn pair_key(first: u64, second: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&second.to_be_bytes());
    key
}

/// Splits a key written by [`pair_key`], or returns `None` for another length.
pub fn split_pair_key(key: &[u8]) -> Option<(u64, u64)> {
    let first = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let second = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    (key.len() == 16).then_some((first, second))
}

/// The key of an idempotency record: the user id, big-endian, then the nonce.
pub fn nonce_key(user: u64, nonce: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + nonce.len());
    key.extend_from_slice(&user.to_be_bytes());
    key.extend_from_slice(nonce.as_bytes());
    key
}

/// A chat message, or the tombstone of a deleted one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sequencer id, fixed at creation.
    pub id: u64,
    /// Sequencer value of the last change; equals `id` until the first edit.
    pub rev: u64,
    /// Channel id.
    pub channel: u64,
    /// Author's user id.
    pub author_id: u64,
    /// Author's username when the message was sent.
    pub author_name: String,
    /// Text as sent, trimmed; empty once deleted.
    pub content: String,
    /// Creation time, ms since the Unix epoch.
    pub ts: u64,
    /// Time of the last edit, ms since the Unix epoch.
    pub edited_ts: Option<u64>,
    /// Client nonce of the send that created the message.
    pub nonce: Option<String>,
    /// Whether the message was deleted; the tombstone keeps id, channel and rev.
    pub deleted: bool,
}

/// An idempotency record: which message a (user, nonce) pair created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceRecord {
    pub channel: u64,
    pub message: u64,
    /// When the send was accepted, ms since the Unix epoch; records older than
    /// the retention period are swept.
    pub created_ms: u64,
}

/// Account roles, from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and posts.
    Member,
    /// Also deletes any message and mutes members.
    Moderator,
    /// Also manages the structure and the users.
    Admin,
}

impl Role {
    /// Parses `member`, `moderator` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "member" => Some(Role::Member),
            "moderator" => Some(Role::Moderator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    /// Username as registered, with its case.
    pub name: String,
    /// argon2id hash in PHC string form.
    pub password_hash: String,
    pub role: Role,
    /// Registration time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Subscription tier name, one of `--tiers`. An unknown name counts as
    /// the first tier.
    pub tier: String,
    /// When the tier ends and the user falls to the first tier, ms since
    /// the Unix epoch; `None` for no end.
    pub tier_expires_ms: Option<u64>,
    /// Until when the user may not send, ms since the Unix epoch.
    pub muted_until_ms: Option<u64>,
    /// A disabled user cannot log in and has no sessions.
    pub disabled: bool,
    /// "Appear offline": other users see this user offline while they are
    /// connected. Set by the user only.
    pub invisible: bool,
}

/// A login session, stored under the SHA-256 hash of its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: u64,
    pub created_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// Who may post in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostPolicy {
    Everyone,
    Admins,
}

/// A channel inside a category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: u64,
    pub name: String,
    pub topic: String,
    pub post: PostPolicy,
    /// Lowest tier that may read the channel; admins may always read.
    pub min_tier: String,
    /// Whether users who may not read the channel do not see it at all,
    /// instead of seeing it locked.
    pub hidden: bool,
}

/// A named group of channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
    pub channels: Vec<Channel>,
}

/// The community structure; `version` grows with every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub version: u64,
    pub categories: Vec<Category>,
}

impl Layout {
    /// Finds a channel by id.
    pub fn channel(&self, id: u64) -> Option<&Channel> {
        self.categories
            .iter()
            .flat_map(|category| category.channels.iter())
            .find(|channel| channel.id == id)
    }

    /// Finds a category by id.
    pub fn category(&self, id: u64) -> Option<&Category> {
        self.categories.iter().find(|category| category.id == id)
    }

    /// Every channel id, in layout order.
    pub fn channel_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.categories
            .iter()
            .flat_map(|category| category.channels.iter().map(|channel| channel.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_message() {
        let message = Message {
            id: 7,
            rev: 9,
            channel: 3,
            author_id: 1,
            author_name: "ana".into(),
            content: "hello".into(),
            ts: 100,
            edited_ts: Some(200),
            nonce: Some("n".into()),
            deleted: false,
        };
        let decoded: Message = decode(&encode(&message)).unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn decode_rejects_unknown_version() {
        let mut bytes = encode(&NonceRecord { channel: 1, message: 2, created_ms: 3 });
        bytes[0] = 99;
        assert!(matches!(decode::<NonceRecord>(&bytes), Err(RecordError::Version(99))));
    }

    #[test]
    fn decode_rejects_huge_length_prefix() {
        // A string whose varint length claims u64::MAX bytes.
        let bytes = [FORMAT_VERSION, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<String>(&bytes).is_err());
    }

    #[test]
    fn pair_key_orders_numerically() {
        assert!(pair_key(1, 255) < pair_key(1, 256));
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
    }

    #[test]
    fn split_pair_key_round_trips() {
        assert_eq!(split_pair_key(&pair_key(5, 6)), Some((5, 6)));
    }
}
