//! `aura verify DIR`: checks a stopped server's data directory, or a backup.
//!
//! Every record of every tree must decode, and every index must agree with
//! the records it indexes:
//! - `messages`: the key's (channel, id) equals the record's. The rev is at
//!   least the id and below the stored id lease. A deleted message keeps no content.
//! - `revs`: exactly one entry per message, at (channel, its rev), holding its id.
//! - `channel_of`: exactly one entry per message, holding its channel.
//! - `users` and `usernames`: each user has its lowercased name, and each
//!   name points at the user that has it.
//! - `nonces`: each record points at the message its user sent with that
//!   nonce, or at a channel that was deleted with its messages.
//!
//! Findings that need no repair (sessions of deleted users, messages of a
//! deleted channel whose removal was interrupted) are printed as notes.
//!
//! NOTE: sled 0.34 has no read-only mode, so opening the database may let
//! sled write its own recovery files in `DIR/db`; no record is changed.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::bail;

use crate::backup::DB_DIR;
use crate::config::VerifyArgs;
use crate::store::records::{decode, split_pair_key};
use crate::store::{Layout, Message, NonceRecord, Session, Store, StoreError, User};

/// Problems kept for printing; later ones are only counted.
const MAX_LISTED: usize = 200;

/// sled page cache while verifying, in bytes.
const VERIFY_CACHE_BYTES: u64 = 64 << 20;

/// Tree names that the store uses, besides sled's default tree.
const KNOWN_TREES: [&str; 9] = [
    "__sled__default",
    "messages",
    "revs",
    "channel_of",
    "nonces",
    "users",
    "usernames",
    "sessions",
    "meta",
];

/// The findings of one check.
#[derive(Debug, Default)]
pub struct Report {
    /// Records per tree, and derived counts, in print order.
    pub counts: Vec<(String, u64)>,
    /// The first [`MAX_LISTED`] problems.
    pub problems: Vec<String>,
    /// Every problem found, listed or not.
    pub problem_count: u64,
    /// Findings that need no repair.
    pub notes: Vec<String>,
}

impl Report {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }

    fn count(&mut self, name: &str, value: u64) {
        self.counts.push((name.to_string(), value));
    }
}

/// The fields of one stored message that the cross-checks use.
struct MessageInfo {
    channel: u64,
    rev: u64,
    author: u64,
    nonce: Option<String>,
}

/// Runs `aura verify DIR` and fails when any problem is found.
pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.join(DB_DIR).is_dir() {
        bail!("no database in {}: pass a data directory or a backup", dir.display());
    }
    let store = match Store::open(dir, VERIFY_CACHE_BYTES) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => bail!(
            "data directory {} is in use by a running server: run `aura backup DEST` and verify DEST, or stop the server first",
            dir.display()
        ),
        Err(error) => bail!("failed to open the database in {}: {error}", dir.display()),
    };
    let report = check(&store.db()?)?;
    print_report(dir, &report);
    if report.problem_count > 0 {
        bail!("{} problems found in {}", report.problem_count, dir.display());
    }
    Ok(())
}

fn print_report(dir: &Path, report: &Report) {
    println!("checked {}", dir.join(DB_DIR).display());
    for (name, count) in &report.counts {
        println!("  {name:<22} {count}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    let unlisted = report.problem_count - report.problems.len() as u64;
    if unlisted > 0 {
        println!("... and {unlisted} more problems");
    }
    if report.problem_count == 0 {
        println!("no problems found");
    }
}

/// Checks every record and index of an open database.
pub fn check(db: &sled::Db) -> Result<Report, sled::Error> {
    let mut report = Report::default();
    for name in db.tree_names() {
        let name = String::from_utf8_lossy(&name).into_owned();
        if !KNOWN_TREES.contains(&name.as_str()) {
            report.notes.push(format!("unknown tree {name:?} is ignored"));
        }
    }

    let (lease, layout) = check_meta(db, &mut report)?;
    let layout_channels: HashSet<u64> = layout.as_ref().map(|layout| layout.channel_ids().collect()).unwrap_or_default();
    let messages = check_messages(db, &mut report, lease, layout.as_ref().map(|_| &layout_channels))?;
    check_revs(db, &mut report, &messages)?;
    check_channel_of(db, &mut report, &messages)?;
    let users = check_users(db, &mut report)?;
    check_sessions(db, &mut report, &users)?;
    check_nonces(db, &mut report, &messages, &layout_channels)?;
    Ok(report)
}

/// Decodes the id lease and the layout, and checks that layout ids are unique.
fn check_meta(db: &sled::Db, report: &mut Report) -> Result<(Option<u64>, Option<Layout>), sled::Error> {
    let meta = db.open_tree("meta")?;
    let mut lease = None;
    let mut layout = None;
    for entry in meta.iter() {
        let (key, value) = entry?;
        match key.as_ref() {
            b"id_lease" => match decode::<u64>(&value) {
                Ok(value) => lease = Some(value),
                Err(error) => report.problem(format!("meta id_lease: {error}")),
            },
            b"layout" => match decode::<Layout>(&value) {
                Ok(value) => layout = Some(value),
                Err(error) => report.problem(format!("meta layout: {error}")),
            },
            other => report.notes.push(format!("unknown meta key {:?} is ignored", String::from_utf8_lossy(other))),
        }
    }
    match &layout {
        None => report.problem("meta has no layout: the server never finished starting on this directory".into()),
        Some(layout) => {
            let mut seen = HashSet::new();
            for category in &layout.categories {
                if !seen.insert(category.id) {
                    report.problem(format!("layout uses id {} twice", category.id));
                }
                for channel in &category.channels {
                    if !seen.insert(channel.id) {
                        report.problem(format!("layout uses id {} twice", channel.id));
                    }
                }
            }
            report.count("layout categories", layout.categories.len() as u64);
            report.count("layout channels", layout.channel_ids().count() as u64);
        }
    }
    if lease.is_none() {
        report.problem("meta has no id_lease: ids could be reused after a restart".into());
    }
    Ok((lease, layout))
}

/// Decodes every message and checks it against its key. `layout_channels`
/// is `None` when the layout is missing, so no channel counts as deleted.
fn check_messages(
    db: &sled::Db,
    report: &mut Report,
    lease: Option<u64>,
    layout_channels: Option<&HashSet<u64>>,
) -> Result<HashMap<u64, MessageInfo>, sled::Error> {
    let tree = db.open_tree("messages")?;
    let mut messages: HashMap<u64, MessageInfo> = HashMap::new();
    let mut deleted = 0u64;
    let mut orphaned: HashMap<u64, u64> = HashMap::new();
    for entry in tree.iter() {
        let (key, value) = entry?;
        let Some((channel, id)) = split_pair_key(&key) else {
            report.problem(format!("messages key {key:?} is not (channel, id)"));
            continue;
        };
        let message: Message = match decode(&value) {
            Ok(message) => message,
            Err(error) => {
                report.problem(format!("message {id} in channel {channel}: {error}"));
                continue;
            }
        };
        if message.channel != channel || message.id != id {
            report.problem(format!(
                "message stored under (channel {channel}, id {id}) says channel {} and id {}",
                message.channel, message.id
            ));
        }
        if message.rev < message.id {
            report.problem(format!("message {id} has rev {} below its id", message.rev));
        }
        if let Some(lease) = lease {
            if message.rev >= lease {
                report.problem(format!(
                    "message {id} has rev {} at or above the id lease {lease}: ids could be reused after a restart",
                    message.rev
                ));
            }
        }
        if message.deleted {
            deleted += 1;
            if !message.content.is_empty() {
                report.problem(format!("deleted message {id} still holds its content"));
            }
        }
        if layout_channels.is_some_and(|channels| !channels.contains(&channel)) {
            *orphaned.entry(channel).or_default() += 1;
        }
        let info = MessageInfo {
            channel,
            rev: message.rev,
            author: message.author_id,
            nonce: message.nonce,
        };
        if let Some(previous) = messages.insert(id, info) {
            report.problem(format!("message id {id} is stored in channels {} and {channel}", previous.channel));
        }
    }
    report.count("messages", messages.len() as u64);
    report.count("messages deleted", deleted);
    for (channel, count) in orphaned {
        report.notes.push(format!(
            "{count} messages remain of channel {channel}, which the layout no longer has (an interrupted channel deletion); the server never serves them"
        ));
    }
    Ok(messages)
}

/// Checks that each message has exactly one `revs` entry, at its rev.
fn check_revs(db: &sled::Db, report: &mut Report, messages: &HashMap<u64, MessageInfo>) -> Result<(), sled::Error> {
    let tree = db.open_tree("revs")?;
    let mut indexed = HashSet::new();
    let mut entries = 0u64;
    for entry in tree.iter() {
        let (key, value) = entry?;
        entries += 1;
        let Some((channel, rev)) = split_pair_key(&key) else {
            report.problem(format!("revs key {key:?} is not (channel, rev)"));
            continue;
        };
        let id: u64 = match decode(&value) {
            Ok(id) => id,
            Err(error) => {
                report.problem(format!("revs entry (channel {channel}, rev {rev}): {error}"));
                continue;
            }
        };
        match messages.get(&id) {
            Some(message) if message.channel == channel && message.rev == rev => {
                indexed.insert(id);
            }
            Some(message) => report.problem(format!(
                "revs entry (channel {channel}, rev {rev}) points at message {id}, which is at (channel {}, rev {})",
                message.channel, message.rev
            )),
            None => report.problem(format!("revs entry (channel {channel}, rev {rev}) points at missing message {id}")),
        }
    }
    for (id, message) in messages {
        if !indexed.contains(id) {
            report.problem(format!("message {id} (channel {}, rev {}) has no revs entry", message.channel, message.rev));
        }
    }
    report.count("revs", entries);
    Ok(())
}

/// Checks that each message has its `channel_of` entry and each entry its message.
fn check_channel_of(db: &sled::Db, report: &mut Report, messages: &HashMap<u64, MessageInfo>) -> Result<(), sled::Error> {
    let tree = db.open_tree("channel_of")?;
    let mut indexed = HashSet::new();
    let mut entries = 0u64;
    for entry in tree.iter() {
        let (key, value) = entry?;
        entries += 1;
        let Ok(id_bytes) = <[u8; 8]>::try_from(key.as_ref()) else {
            report.problem(format!("channel_of key {key:?} is not a message id"));
            continue;
        };
        let id = u64::from_be_bytes(id_bytes);
        let channel: u64 = match decode(&value) {
            Ok(channel) => channel,
            Err(error) => {
                report.problem(format!("channel_of entry of message {id}: {error}"));
                continue;
            }
        };
        match messages.get(&id) {
            Some(message) if message.channel == channel => {
                indexed.insert(id);
            }
            Some(message) => report.problem(format!(
                "channel_of says message {id} is in channel {channel}, but it is stored in channel {}",
                message.channel
            )),
            None => report.problem(format!("channel_of entry points at missing message {id} in channel {channel}")),
        }
    }
    for (id, message) in messages {
        if !indexed.contains(id) {
            report.problem(format!("message {id} (channel {}) has no channel_of entry", message.channel));
        }
    }
    report.count("channel_of", entries);
    Ok(())
}

/// Checks users against `usernames` both ways; returns the user ids.
fn check_users(db: &sled::Db, report: &mut Report) -> Result<HashSet<u64>, sled::Error> {
    let mut names: HashMap<String, u64> = HashMap::new();
    for entry in db.open_tree("users")?.iter() {
        let (key, value) = entry?;
        let user: User = match decode(&value) {
            Ok(user) => user,
            Err(error) => {
                report.problem(format!("user record under key {key:?}: {error}"));
                continue;
            }
        };
        if key.as_ref() != user.id.to_be_bytes() {
            report.problem(format!("user {} is stored under key {key:?}", user.id));
        }
        if let Some(other) = names.insert(user.name.to_ascii_lowercase(), user.id) {
            report.problem(format!("users {other} and {} share the name {:?}", user.id, user.name));
        }
    }

    let mut named = HashSet::new();
    let mut entries = 0u64;
    for entry in db.open_tree("usernames")?.iter() {
        let (key, value) = entry?;
        entries += 1;
        let name = String::from_utf8_lossy(&key).into_owned();
        let id: u64 = match decode(&value) {
            Ok(id) => id,
            Err(error) => {
                report.problem(format!("usernames entry {name:?}: {error}"));
                continue;
            }
        };
        match names.get(&name) {
            Some(&owner) if owner == id => {
                named.insert(id);
            }
            Some(&owner) => report.problem(format!("usernames entry {name:?} points at user {id}, but user {owner} has that name")),
            None => report.problem(format!("usernames entry {name:?} points at user {id}, who does not exist or has another name")),
        }
    }
    for (name, id) in &names {
        if !named.contains(id) {
            report.problem(format!("user {id} ({name:?}) has no usernames entry: nobody can log in or register as that name"));
        }
    }
    report.count("users", names.len() as u64);
    report.count("usernames", entries);
    Ok(names.into_values().collect())
}

/// Decodes every session and notes sessions of users that no longer exist.
fn check_sessions(db: &sled::Db, report: &mut Report, users: &HashSet<u64>) -> Result<(), sled::Error> {
    let mut entries = 0u64;
    let mut stale = 0u64;
    for entry in db.open_tree("sessions")?.iter() {
        let (_, value) = entry?;
        entries += 1;
        match decode::<Session>(&value) {
            Ok(session) if !users.contains(&session.user) => stale += 1,
            Ok(_) => {}
            // The key is a token hash, which is not printed.
            Err(error) => report.problem(format!("a session record: {error}")),
        }
    }
    if stale > 0 {
        report.notes.push(format!("{stale} sessions belong to deleted users; they no longer authenticate"));
    }
    report.count("sessions", entries);
    Ok(())
}

/// Checks that each idempotency record points at the message it created,
/// or at a deleted channel.
fn check_nonces(
    db: &sled::Db,
    report: &mut Report,
    messages: &HashMap<u64, MessageInfo>,
    layout_channels: &HashSet<u64>,
) -> Result<(), sled::Error> {
    let mut entries = 0u64;
    let mut of_deleted_channels = 0u64;
    for entry in db.open_tree("nonces")?.iter() {
        let (key, value) = entry?;
        entries += 1;
        let Some((user_bytes, nonce_bytes)) = key.split_first_chunk::<8>() else {
            report.problem(format!("nonces key {key:?} is shorter than a user id"));
            continue;
        };
        let user = u64::from_be_bytes(*user_bytes);
        let nonce = String::from_utf8_lossy(nonce_bytes);
        let record: NonceRecord = match decode(&value) {
            Ok(record) => record,
            Err(error) => {
                report.problem(format!("nonce {nonce:?} of user {user}: {error}"));
                continue;
            }
        };
        match messages.get(&record.message) {
            Some(message)
                if message.channel == record.channel
                    && message.author == user
                    && message.nonce.as_deref() == Some(nonce.as_ref()) => {}
            _ if !layout_channels.contains(&record.channel) => of_deleted_channels += 1,
            Some(_) => report.problem(format!(
                "nonce {nonce:?} of user {user} points at message {}, which another send created",
                record.message
            )),
            None => report.problem(format!(
                "nonce {nonce:?} of user {user} points at missing message {} in channel {}: a resend would get not_found",
                record.message, record.channel
            )),
        }
    }
    report.count("nonces", entries);
    if of_deleted_channels > 0 {
        report.count("nonces of deleted channels", of_deleted_channels);
    }
    Ok(())
}
