//! Changes to the community structure: categories, channels and their order.
//!
//! Each function applies one operation to a copy of the current layout; the
//! hub serializes the operations, bumps the version, stores the result and
//! pushes it. Moves name the item and its target position, so two devices
//! that move different things at the same moment both take effect.

use serde::Deserialize;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::store::{Category, Channel, Layout, PostPolicy};

/// Maximum length of a category or channel name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Maximum length of a channel topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 256;

/// Fields of a new channel.
#[derive(Debug, Clone, Deserialize)]
pub struct NewChannel {
    pub category: crate::ids::Id,
    pub name: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub min_tier: Option<String>,
    #[serde(default)]
    pub post: Option<PostPolicy>,
    #[serde(default)]
    pub hidden: bool,
}

/// Changes to a channel; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub min_tier: Option<String>,
    pub post: Option<PostPolicy>,
    pub hidden: Option<bool>,
}

/// What a move operation moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    Category,
    Channel,
}

/// A move: put item `id` at `index` (clamped to the end), for a channel in
/// `to_category` (default: its current category).
#[derive(Debug, Clone, Deserialize)]
pub struct Move {
    pub kind: MoveKind,
    pub id: crate::ids::Id,
    #[serde(default)]
    pub to_category: Option<crate::ids::Id>,
    pub index: usize,
}

/// Adds an empty category at the end.
pub fn create_category(layout: &mut Layout, id: u64, name: &str) -> Result<(), ApiError> {
    let name = validate_name("category name", name)?;
    layout.categories.push(Category {
        id,
        name,
        channels: Vec::new(),
    });
    Ok(())
}

/// Renames a category.
pub fn rename_category(layout: &mut Layout, id: u64, name: &str) -> Result<(), ApiError> {
    let name = validate_name("category name", name)?;
    category_mut(layout, id)?.name = name;
    Ok(())
}

/// Removes an empty category; one that still contains channels is a conflict.
pub fn delete_category(layout: &mut Layout, id: u64) -> Result<(), ApiError> {
    let index = category_index(layout, id)?;
    if !layout.categories[index].channels.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "category still holds channels: move or delete them first",
        ));
    }
    layout.categories.remove(index);
    Ok(())
}

/// Adds a channel at the end of its category.
pub fn create_channel(config: &Config, layout: &mut Layout, id: u64, new: &NewChannel) -> Result<(), ApiError> {
    let channel = Channel {
        id,
        name: validate_name("channel name", &new.name)?,
        topic: validate_topic(&new.topic)?,
        post: new.post.unwrap_or(PostPolicy::Everyone),
        min_tier: validate_tier(config, new.min_tier.as_deref().unwrap_or(config.first_tier()))?,
        hidden: new.hidden,
    };
    category_mut(layout, new.category.0)?.channels.push(channel);
    Ok(())
}

/// Changes a channel's fields.
pub fn edit_channel(config: &Config, layout: &mut Layout, id: u64, patch: &ChannelPatch) -> Result<(), ApiError> {
    let name = patch.name.as_deref().map(|name| validate_name("channel name", name)).transpose()?;
    let topic = patch.topic.as_deref().map(validate_topic).transpose()?;
    let min_tier = patch.min_tier.as_deref().map(|tier| validate_tier(config, tier)).transpose()?;
    let channel = channel_mut(layout, id)?;
    if let Some(name) = name {
        channel.name = name;
    }
    if let Some(topic) = topic {
        channel.topic = topic;
    }
    if let Some(min_tier) = min_tier {
        channel.min_tier = min_tier;
    }
    if let Some(post) = patch.post {
        channel.post = post;
    }
    if let Some(hidden) = patch.hidden {
        channel.hidden = hidden;
    }
    Ok(())
}

/// Removes a channel from the layout.
pub fn delete_channel(layout: &mut Layout, id: u64) -> Result<Channel, ApiError> {
    for category in &mut layout.categories {
        if let Some(index) = category.channels.iter().position(|channel| channel.id == id) {
            return Ok(category.channels.remove(index));
        }
    }
    Err(ApiError::channel_not_found())
}

/// Moves a category or channel to a new position.
pub fn apply_move(layout: &mut Layout, operation: &Move) -> Result<(), ApiError> {
    match operation.kind {
        MoveKind::Category => {
            let from = category_index(layout, operation.id.0)?;
            let category = layout.categories.remove(from);
            let index = operation.index.min(layout.categories.len());
            layout.categories.insert(index, category);
        }
        MoveKind::Channel => {
            let target = match operation.to_category {
                Some(category) => category_index(layout, category.0)?,
                None => layout
                    .categories
                    .iter()
                    .position(|category| category.channels.iter().any(|channel| channel.id == operation.id.0))
                    .ok_or_else(ApiError::channel_not_found)?,
            };
            let channel = delete_channel(layout, operation.id.0)?;
            let channels = &mut layout.categories[target].channels;
            let index = operation.index.min(channels.len());
            channels.insert(index, channel);
        }
    }
    Ok(())
}

fn category_index(layout: &Layout, id: u64) -> Result<usize, ApiError> {
    layout
        .categories
        .iter()
        .position(|category| category.id == id)
        .ok_or_else(|| ApiError::not_found("category not found"))
}

fn category_mut(layout: &mut Layout, id: u64) -> Result<&mut Category, ApiError> {
    let index = category_index(layout, id)?;
    Ok(&mut layout.categories[index])
}

fn channel_mut(layout: &mut Layout, id: u64) -> Result<&mut Channel, ApiError> {
    layout
        .categories
        .iter_mut()
        .flat_map(|category| category.channels.iter_mut())
        .find(|channel| channel.id == id)
        .ok_or_else(ApiError::channel_not_found)
}

/// Checks a display name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters or line separators, and no bidirectional formatting
/// or invisible characters, which could make one name look like another.
pub fn validate_name(what: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!("{what} must have 1 to {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(|c| c.is_control() || is_line_separator(c) || is_bidi_control(c) || is_invisible(c)) {
        return Err(ApiError::bad_request(format!(
            "{what} contains a control, invisible or bidirectional formatting character: remove it"
        )));
    }
    Ok(name.to_string())
}

fn validate_topic(topic: &str) -> Result<String, ApiError> {
    let topic = topic.trim();
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(ApiError::bad_request(format!("topic must have at most {MAX_TOPIC_CHARS} characters")));
    }
    if topic.chars().any(|c| c.is_control() || is_line_separator(c) || is_bidi_control(c)) {
        return Err(ApiError::bad_request("topic contains a control or bidirectional formatting character"));
    }
    Ok(topic.to_string())
}

fn validate_tier(config: &Config, tier: &str) -> Result<String, ApiError> {
    if config.tiers.iter().any(|name| name == tier) {
        Ok(tier.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "tier {tier:?} is unknown: expected one of {}",
            config.tiers.join(", ")
        )))
    }
}

/// Unicode bidirectional formatting characters (embeddings, overrides,
/// isolates and marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Returns whether `c` is the line or paragraph separator (U+2028, U+2029),
/// which break a line like a newline but are not control characters.
fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Characters that render as nothing, so that "gen\u{200B}eral" looks like
/// "general": soft hyphen, combining grapheme joiner, Hangul fillers,
/// Mongolian vowel separator, zero-width space and non-joiner, word joiner
/// and invisible operators, and the byte order mark. The zero-width joiner
/// U+200D stays allowed because emoji sequences need it.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200C}'
            | '\u{2060}'..='\u{2064}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn sample() -> Layout {
        let channel = |id| Channel {
            id,
            name: format!("c{id}"),
            topic: String::new(),
            post: PostPolicy::Everyone,
            min_tier: "free".into(),
            hidden: false,
        };
        Layout {
            version: 1,
            categories: vec![
                Category { id: 1, name: "a".into(), channels: vec![channel(10), channel(11), channel(12)] },
                Category { id: 2, name: "b".into(), channels: vec![channel(20)] },
            ],
        }
    }

    fn channel_ids(layout: &Layout, category: usize) -> Vec<u64> {
        layout.categories[category].channels.iter().map(|channel| channel.id).collect()
    }

    #[test]
    fn move_channel_within_category() {
        let mut layout = sample();
        apply_move(&mut layout, &Move { kind: MoveKind::Channel, id: crate::ids::Id(12), to_category: None, index: 0 }).unwrap();
        assert_eq!(channel_ids(&layout, 0), vec![12, 10, 11]);
    }

    #[test]
    fn move_channel_to_other_category_clamps_index() {
        let mut layout = sample();
        let operation = Move { kind: MoveKind::Channel, id: crate::ids::Id(10), to_category: Some(crate::ids::Id(2)), index: 99 };
        apply_move(&mut layout, &operation).unwrap();
        assert_eq!(channel_ids(&layout, 0), vec![11, 12]);
        assert_eq!(channel_ids(&layout, 1), vec![20, 10]);
    }

    #[test]
    fn delete_nonempty_category_conflicts() {
        let mut layout = sample();
        let error = delete_category(&mut layout, 1).unwrap_err();
        assert_eq!(error.code, ErrorCode::Conflict);
    }

    #[test]
    fn name_with_bidi_override_is_rejected() {
        assert!(validate_name("channel name", "gen\u{202E}eral").is_err());
    }

    #[test]
    fn name_with_invisible_character_is_rejected() {
        for name in ["gen\u{200B}eral", "gen\u{00AD}eral", "\u{FEFF}general", "gen\u{2028}eral"] {
            assert!(validate_name("channel name", name).is_err(), "{name:?} is rejected");
        }
    }

    #[test]
    fn name_with_emoji_sequence_is_accepted() {
        let family = "fam \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert_eq!(validate_name("channel name", family).unwrap(), family);
    }

    #[test]
    fn create_channel_rejects_unknown_tier() {
        let config = ServeArgs::for_tests("/tmp/x").validate().unwrap();
        let mut layout = sample();
        let new = NewChannel {
            category: crate::ids::Id(1),
            name: "vip".into(),
            topic: String::new(),
            min_tier: Some("platinum".into()),
            post: None,
            hidden: false,
        };
        assert!(create_channel(&config, &mut layout, 30, &new).is_err());
    }
}
