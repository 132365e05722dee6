//! JSON frames of the client protocol, shared by the WebSocket and HTTP APIs.
//!
//! docs/protocol.md describes every frame with an example. Ids and revs are
//! [`Id`]s, so JSON carries them as decimal strings.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{ApiError, ErrorCode};
use crate::ids::Id;
use crate::store::{Channel, Layout, Message, PostPolicy, Role, User};

/// Default page size of subscribe, history and polling.
pub const DEFAULT_PAGE: usize = 50;

/// Largest page size a client may request.
pub const MAX_PAGE: usize = 200;

/// Maximum nonce length in characters.
pub const MAX_NONCE_CHARS: usize = 64;

/// An operation sent by a WebSocket client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    Subscribe {
        channel: Id,
        #[serde(default)]
        after: Option<Id>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Unsubscribe {
        channel: Id,
    },
    Send {
        channel: Id,
        content: String,
        nonce: String,
    },
    Edit {
        id: Id,
        content: String,
    },
    Delete {
        id: Id,
    },
    History {
        channel: Id,
        #[serde(default)]
        before: Option<Id>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Heartbeat,
    Typing {
        channel: Id,
    },
    SetPresence {
        invisible: bool,
    },
}

impl ClientOp {
    /// The operation's name, as in the `op` field.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Subscribe { .. } => "subscribe",
            ClientOp::Unsubscribe { .. } => "unsubscribe",
            ClientOp::Send { .. } => "send",
            ClientOp::Edit { .. } => "edit",
            ClientOp::Delete { .. } => "delete",
            ClientOp::History { .. } => "history",
            ClientOp::Heartbeat => "heartbeat",
            ClientOp::Typing { .. } => "typing",
            ClientOp::SetPresence { .. } => "set_presence",
        }
    }

    /// Parses a text frame. The error carries the frame's nonce, when it has
    /// one, so that the client can match the error to its send.
    pub fn parse(text: &str) -> Result<ClientOp, (ApiError, Option<String>)> {
        serde_json::from_str(text).map_err(|error| {
            #[derive(Deserialize)]
            struct NonceOnly {
                nonce: Option<String>,
            }
            let nonce = serde_json::from_str::<NonceOnly>(text)
                .ok()
                .and_then(|probe| probe.nonce);
            (ApiError::bad_request(format!("invalid frame: {}", describe_json_error(&error))), nonce)
        })
    }
}

/// Returns serde_json's message for `error` with Rust type names replaced
/// by plain words, so that a client reads "expected a non-negative integer"
/// where serde writes "expected usize".
pub fn describe_json_error(error: &serde_json::Error) -> String {
    const PLAIN_NAMES: [(&str, &str); 10] = [
        ("usize", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u16", "a non-negative integer"),
        ("u8", "a non-negative integer"),
        ("isize", "an integer"),
        ("i64", "an integer"),
        ("i32", "an integer"),
        ("f64", "a number"),
        ("f32", "a number"),
    ];
    let mut text = error.to_string();
    for (rust_name, plain) in PLAIN_NAMES {
        let pattern = format!("expected {rust_name}");
        let mut searched = 0;
        while let Some(found) = text[searched..].find(&pattern) {
            let start = searched + found;
            let end = start + pattern.len();
            // Only a whole word: "expected u8" must not match "expected u8x".
            if text[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                searched = end;
                continue;
            }
            let replacement = format!("expected {plain}");
            text.replace_range(start..end, &replacement);
            searched = start + replacement.len();
        }
    }
    text
}

/// Clamps a requested page size to 1..=[`MAX_PAGE`], defaulting to [`DEFAULT_PAGE`].
pub fn page_limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// Checks a nonce: 1 to [`MAX_NONCE_CHARS`] characters with no control characters.
pub fn validate_nonce(nonce: &str) -> Result<(), ApiError> {
    let chars = nonce.chars().count();
    if chars == 0 || chars > MAX_NONCE_CHARS || nonce.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "nonce must be 1 to {MAX_NONCE_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// A user as clients see it: their own account in `ready`, `user` frames
/// and /api/me, and every account in the admin list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: Id,
    pub name: String,
    pub role: Role,
    pub tier: String,
    /// When the tier ends, ms since the Unix epoch.
    pub tier_expires_at: Option<u64>,
    /// Until when the user may not send, ms since the Unix epoch.
    pub muted_until: Option<u64>,
    pub disabled: bool,
    /// Whether the user chose to appear offline to others.
    #[serde(default)]
    pub invisible: bool,
}

impl UserView {
    pub fn of(user: &User) -> Self {
        UserView {
            id: Id(user.id),
            name: user.name.clone(),
            role: user.role,
            tier: user.tier.clone(),
            tier_expires_at: user.tier_expires_ms,
            muted_until: user.muted_until_ms,
            disabled: user.disabled,
            invisible: user.invisible,
        }
    }
}

/// A message as clients see it: the full object, or for a deleted message
/// only `id`, `channel`, `rev` and `deleted: true`.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a>(pub &'a Message);

impl Serialize for MessageView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        if message.deleted {
            let mut map = serializer.serialize_map(Some(4))?;
            map.serialize_entry("id", &Id(message.id))?;
            map.serialize_entry("channel", &Id(message.channel))?;
            map.serialize_entry("rev", &Id(message.rev))?;
            map.serialize_entry("deleted", &true)?;
            return map.end();
        }
        #[derive(Serialize)]
        struct Author<'a> {
            id: Id,
            name: &'a str,
        }
        let mut map = serializer.serialize_map(Some(9))?;
        map.serialize_entry("id", &Id(message.id))?;
        map.serialize_entry("rev", &Id(message.rev))?;
        map.serialize_entry("channel", &Id(message.channel))?;
        map.serialize_entry(
            "author",
            &Author {
                id: Id(message.author_id),
                name: &message.author_name,
            },
        )?;
        map.serialize_entry("content", &message.content)?;
        map.serialize_entry("ts", &message.ts)?;
        map.serialize_entry("edited_ts", &message.edited_ts)?;
        map.serialize_entry("nonce", &message.nonce)?;
        map.serialize_entry("deleted", &false)?;
        map.end()
    }
}

/// Serializes a list of messages as views.
pub fn message_views<'a, M: AsRef<Message> + 'a>(
    messages: &'a [M],
) -> impl Serialize + 'a {
    struct Views<'a, M>(&'a [M]);
    impl<M: AsRef<Message>> Serialize for Views<'_, M> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(|message| MessageView(message.as_ref())))
        }
    }
    Views(messages)
}

#[derive(Debug, Serialize)]
struct ChannelView<'a> {
    id: Id,
    name: &'a str,
    topic: &'a str,
    post: PostPolicy,
    min_tier: &'a str,
    hidden: bool,
    /// True when the user may not read the channel: it is shown so that the
    /// client can say which tier unlocks it.
    locked: bool,
}

#[derive(Debug, Serialize)]
struct CategoryView<'a> {
    id: Id,
    name: &'a str,
    channels: Vec<ChannelView<'a>>,
}

/// The layout as one user sees it.
#[derive(Debug, Serialize)]
pub struct LayoutView<'a> {
    version: u64,
    categories: Vec<CategoryView<'a>>,
}

impl<'a> LayoutView<'a> {
    /// The view of a user for whom `can_read` tells which channels are
    /// readable. Unreadable channels are locked, or left out when hidden. A
    /// category whose channels are all left out is left out too, unless
    /// `sees_all` (admins see everything).
    pub fn new(layout: &'a Layout, sees_all: bool, can_read: impl Fn(&Channel) -> bool) -> Self {
        let categories = layout
            .categories
            .iter()
            .filter_map(|category| {
                let channels: Vec<ChannelView> = category
                    .channels
                    .iter()
                    .filter_map(|channel| {
                        let readable = can_read(channel);
                        (readable || !channel.hidden).then_some(ChannelView {
                            id: Id(channel.id),
                            name: &channel.name,
                            topic: &channel.topic,
                            post: channel.post,
                            min_tier: &channel.min_tier,
                            hidden: channel.hidden,
                            locked: !readable,
                        })
                    })
                    .collect();
                let keep = sees_all || !channels.is_empty() || category.channels.is_empty();
                keep.then_some(CategoryView {
                    id: Id(category.id),
                    name: &category.name,
                    channels,
                })
            })
            .collect();
        LayoutView {
            version: layout.version,
            categories,
        }
    }
}

/// Encodes a server frame as the bytes of a WebSocket text frame.
pub fn encode_frame(frame: &impl Serialize) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(frame).expect("server frames serialize to JSON"))
}

/// `{"op":"message","message":M}`.
pub fn message_frame(message: &Message) -> bytes::Bytes {
    #[derive(Serialize)]
    struct Frame<'a> {
        op: &'static str,
        message: MessageView<'a>,
    }
    encode_frame(&Frame {
        op: "message",
        message: MessageView(message),
    })
}

/// `{"op":"ack","nonce","id","rev"}`.
pub fn ack_frame(nonce: &str, id: u64, rev: u64) -> bytes::Bytes {
    encode_frame(&serde_json::json!({
        "op": "ack",
        "nonce": nonce,
        "id": Id(id),
        "rev": Id(rev),
    }))
}

/// `{"op":"error","code","message","nonce"?}`.
pub fn error_frame(error: &ApiError, nonce: Option<&str>) -> bytes::Bytes {
    #[derive(Serialize)]
    struct Frame<'a> {
        op: &'static str,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    encode_frame(&Frame {
        op: "error",
        code: error.code,
        message: &error.message,
        nonce,
        retry_after_ms: error.retry_after_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_error_names_no_rust_types() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Page {
            limit: usize,
            offset: i64,
        }
        let error = serde_json::from_str::<Page>(r#"{"limit":"ten","offset":0}"#).unwrap_err();
        let text = super::describe_json_error(&error);
        assert!(text.contains("expected a non-negative integer"), "usize is described in words: {text}");
        assert!(!text.contains("usize"), "the Rust type name is gone: {text}");

        let error = serde_json::from_str::<Page>(r#"{"limit":1,"offset":"x"}"#).unwrap_err();
        let text = super::describe_json_error(&error);
        assert!(text.contains("expected an integer"), "i64 is described in words: {text}");
    }

    use super::*;

    fn sample(deleted: bool) -> Message {
        Message {
            id: 10,
            rev: 12,
            channel: 3,
            author_id: 1,
            author_name: "ana".into(),
            content: if deleted { String::new() } else { "hi".into() },
            ts: 5,
            edited_ts: None,
            nonce: Some("n1".into()),
            deleted,
        }
    }

    #[test]
    fn message_view_has_every_field() {
        let json = serde_json::to_value(MessageView(&sample(false))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"10","rev":"12","channel":"3","author":{"id":"1","name":"ana"},
                "content":"hi","ts":5,"edited_ts":null,"nonce":"n1","deleted":false})
        );
    }

    #[test]
    fn deleted_message_view_is_tombstone() {
        let json = serde_json::to_value(MessageView(&sample(true))).unwrap();
        assert_eq!(json, serde_json::json!({"id":"10","channel":"3","rev":"12","deleted":true}));
    }

    #[test]
    fn parse_error_keeps_nonce() {
        let (_, nonce) = ClientOp::parse(r#"{"op":"send","nonce":"abc"}"#).unwrap_err();
        assert_eq!(nonce.as_deref(), Some("abc"));
    }

    #[test]
    fn parse_accepts_subscribe_without_after() {
        let op = ClientOp::parse(r#"{"op":"subscribe","channel":"5"}"#).unwrap();
        assert!(matches!(op, ClientOp::Subscribe { channel: Id(5), after: None, limit: None }));
    }

    #[test]
    fn page_limit_clamps_to_maximum() {
        assert_eq!(page_limit(Some(10_000)), MAX_PAGE);
    }

    #[test]
    fn nonce_over_64_chars_is_rejected() {
        assert!(validate_nonce(&"x".repeat(65)).is_err());
    }
}
