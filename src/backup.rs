//! Consistent copies of the database: `aura backup DEST` and periodic
//! backups.
//!
//! Copying sled's files while the server writes can give a copy that opens
//! silently empty, so a backup copies records, not files. It holds the
//! store's write gate, so no write is half done, while it dumps every record
//! of every tree into `DEST/dump.partial`. Then writes resume, and the dump
//! is loaded into a new sled database in `DEST/db.partial`, which is flushed
//! and renamed to `DEST/db`. A crash or a cancelled backup therefore never
//! leaves a `DEST/db` that looks complete. `DEST` is then a data directory
//! that `aura serve --data-dir DEST` starts from.
//!
//! While the dump runs, reads go on and writes wait: sends queue in the
//! writer's queue and are acknowledged once the dump is done.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::admin::{self, AdminRequest, AdminResponse};
use crate::config::{BackupArgs, BackupSchedule};
use crate::ids::now_ms;
use crate::store::{Store, StoreError};

/// Name of the database directory inside a data directory.
pub const DB_DIR: &str = "db";

/// Name of the database directory while a backup writes it.
const PARTIAL_DB_DIR: &str = "db.partial";

/// Records copied per sled batch, and between checks for cancellation.
const COPY_BATCH: usize = 1024;

/// File in the destination that holds the records until the copy is built.
const DUMP_FILE: &str = "dump.partial";

/// Dump file markers: a tree name follows, or a record follows.
const DUMP_TREE: u8 = 1;
const DUMP_RECORD: u8 = 2;

/// Prefix of the directories that periodic backups create.
const PERIODIC_PREFIX: &str = "aura-";

/// sled page cache for a database that `aura backup` opens itself, in bytes.
const OFFLINE_CACHE_BYTES: u64 = 64 << 20;

/// Errors while writing a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup destination {0} is not empty: choose a new or empty directory")]
    NotEmpty(PathBuf),
    #[error("backup destination {0} is not a directory: choose a new directory")]
    NotDirectory(PathBuf),
    #[error("backup destination {0} must be an absolute path")]
    Relative(PathBuf),
    #[error("failed to write the backup in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to copy the database into {path}: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the backup into {0} was cancelled because the server is stopping")]
    Cancelled(PathBuf),
}

/// Summary of a written backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// The new data directory.
    pub dest: PathBuf,
    /// Records copied, by tree name.
    pub trees: Vec<(String, u64)>,
    /// Time writes waited while the records were read, in milliseconds.
    pub paused_millis: u64,
    /// Time the whole backup took, in milliseconds.
    pub millis: u64,
}

impl BackupReport {
    /// Records copied over all trees.
    pub fn records(&self) -> u64 {
        self.trees.iter().map(|(_, count)| count).sum()
    }
}

/// Sets the flag when dropped, so that a copy running on a blocking thread
/// stops when the task that waits for it is cancelled.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Writes a consistent copy of `store` into `dest`, a new or empty
/// directory, which becomes a data directory.
///
/// Writes wait only while every record is dumped to a file, a sequential
/// read and write. Building the new sled database from the dump, the slow
/// part, runs after writes resumed.
pub async fn back_up(store: &Store, dest: &Path) -> Result<BackupReport, BackupError> {
    if dest.is_relative() {
        return Err(BackupError::Relative(dest.to_path_buf()));
    }
    prepare_destination(dest)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());

    let started = Instant::now();
    let paused = store.pause_writes().await;
    store.flush().await?;
    let source = store.db()?;
    let dump = dest.join(DUMP_FILE);
    let dumped = run_blocking(dest, {
        let dump = dump.clone();
        let cancel = cancel.clone();
        move || dump_trees(&source, &dump, &cancel)
    })
    .await;
    drop(paused);
    let paused_millis = started.elapsed().as_millis() as u64;

    let loaded = match dumped {
        Ok(trees) => {
            let target = dest.to_path_buf();
            run_blocking(dest, move || load_dump(&dump, &target, &cancel).map(|()| trees)).await
        }
        Err(error) => Err(error),
    };
    let _ = std::fs::remove_file(dest.join(DUMP_FILE));
    let trees = match loaded {
        Ok(trees) => trees,
        Err(error) => {
            let _ = std::fs::remove_dir_all(dest.join(PARTIAL_DB_DIR));
            return Err(error);
        }
    };
    Ok(BackupReport {
        dest: dest.to_path_buf(),
        trees,
        paused_millis,
        millis: started.elapsed().as_millis() as u64,
    })
}

/// Runs `work` on a blocking thread.
async fn run_blocking<T: Send + 'static>(
    dest: &Path,
    work: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| {
        Err(BackupError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::other(format!("backup task failed: {error}")),
        })
    })
}

/// Creates `dest` with mode 0700, or accepts it when it is an empty directory.
fn prepare_destination(dest: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    let io_error = |source| BackupError::Io {
        path: dest.to_path_buf(),
        source,
    };
    match std::fs::metadata(dest) {
        Ok(metadata) if !metadata.is_dir() => Err(BackupError::NotDirectory(dest.to_path_buf())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dest).map_err(io_error)?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(BackupError::NotEmpty(dest.to_path_buf())),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(io_error),
        Err(error) => Err(io_error(error)),
    }
}

/// Writes every record of every tree of `source` to the file `dump`.
/// Returns the records per tree, sorted by tree name.
///
/// The format is private to a backup: for each tree, a tree marker with the
/// tree's name, then a record marker with key and value for each record;
/// every name, key and value is a big-endian u32 length and the bytes.
fn dump_trees(source: &sled::Db, dump: &Path, cancel: &AtomicBool) -> Result<Vec<(String, u64)>, BackupError> {
    let io_error = |source| BackupError::Io {
        path: dump.to_path_buf(),
        source,
    };
    let copy_error = |source| BackupError::Copy {
        path: dump.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(std::fs::File::create(dump).map_err(io_error)?);
    let mut counts = Vec::new();
    for name in source.tree_names() {
        out.write_all(&[DUMP_TREE]).map_err(io_error)?;
        write_chunk(&mut out, &name).map_err(io_error)?;
        let mut copied = 0u64;
        for entry in source.open_tree(&name).map_err(copy_error)?.iter() {
            let (key, value) = entry.map_err(copy_error)?;
            out.write_all(&[DUMP_RECORD]).map_err(io_error)?;
            write_chunk(&mut out, &key).map_err(io_error)?;
            write_chunk(&mut out, &value).map_err(io_error)?;
            copied += 1;
            if copied % COPY_BATCH as u64 == 0 && cancel.load(Ordering::Acquire) {
                return Err(BackupError::Cancelled(dump.to_path_buf()));
            }
        }
        counts.push((String::from_utf8_lossy(&name).into_owned(), copied));
    }
    out.flush().map_err(io_error)?;
    counts.sort();
    Ok(counts)
}

fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a key or value exceeds 4 GiB"))?;
    out.write_all(&length.to_be_bytes())?;
    out.write_all(bytes)
}

fn read_chunk(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    input.read_exact(&mut length)?;
    let mut bytes = vec![0u8; u32::from_be_bytes(length) as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Builds a sled database in `dest/db.partial` from a file that
/// [`dump_trees`] wrote, flushes it, and renames it to `dest/db`.
fn load_dump(dump: &Path, dest: &Path, cancel: &AtomicBool) -> Result<(), BackupError> {
    let io_error = |source| BackupError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let copy_error = |source| BackupError::Copy {
        path: dest.to_path_buf(),
        source,
    };
    let partial = dest.join(PARTIAL_DB_DIR);
    let target = sled::Config::new()
        .path(&partial)
        .flush_every_ms(None)
        .open()
        .map_err(copy_error)?;

    let mut input = BufReader::new(std::fs::File::open(dump).map_err(io_error)?);
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    loop {
        let mut marker = [0u8; 1];
        match input.read_exact(&mut marker) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(io_error(error)),
        }
        if marker[0] == DUMP_TREE || in_batch == COPY_BATCH {
            if let Some(tree) = &tree {
                tree.apply_batch(std::mem::take(&mut batch)).map_err(copy_error)?;
            }
            in_batch = 0;
            if cancel.load(Ordering::Acquire) {
                return Err(BackupError::Cancelled(dest.to_path_buf()));
            }
        }
        match marker[0] {
            DUMP_TREE => {
                let name = read_chunk(&mut input).map_err(io_error)?;
                tree = Some(target.open_tree(name).map_err(copy_error)?);
            }
            DUMP_RECORD if tree.is_some() => {
                let key = read_chunk(&mut input).map_err(io_error)?;
                let value = read_chunk(&mut input).map_err(io_error)?;
                batch.insert(key, value);
                in_batch += 1;
            }
            other => return Err(io_error(std::io::Error::other(format!("dump file has an invalid marker {other}")))),
        }
    }
    if let Some(tree) = &tree {
        tree.apply_batch(batch).map_err(copy_error)?;
    }
    drop(tree);
    target.flush().map_err(copy_error)?;
    drop(target);
    if cancel.load(Ordering::Acquire) {
        return Err(BackupError::Cancelled(dest.to_path_buf()));
    }

    std::fs::rename(&partial, dest.join(DB_DIR)).map_err(io_error)?;
    std::fs::File::open(dest).and_then(|dir| dir.sync_all()).map_err(io_error)?;
    Ok(())
}

/// Writes a backup into `schedule.dir` every `schedule.every`, and keeps the
/// newest `schedule.keep`. The first one is due one interval after the
/// newest existing backup, so restarts do not postpone backups forever.
pub async fn back_up_periodically(store: Arc<Store>, schedule: BackupSchedule) {
    tracing::info!(
        dir = %schedule.dir.display(),
        every_secs = schedule.every.as_secs(),
        keep = schedule.keep,
        "periodic backups enabled"
    );
    loop {
        let wait = match newest_backup_time(&schedule.dir) {
            Some(newest) => schedule
                .every
                .saturating_sub(SystemTime::now().duration_since(newest).unwrap_or(Duration::ZERO)),
            None => Duration::ZERO,
        };
        tokio::time::sleep(wait).await;

        let dest = schedule.dir.join(periodic_name(now_ms()));
        match back_up(&store, &dest).await {
            Ok(report) => tracing::info!(
                dest = %dest.display(),
                records = report.records(),
                millis = report.millis,
                paused_millis = report.paused_millis,
                "periodic backup written"
            ),
            Err(error) => {
                tracing::error!(%error, dest = %dest.display(), "periodic backup failed; retrying after one interval");
                let _ = std::fs::remove_dir_all(&dest);
                tokio::time::sleep(schedule.every).await;
                continue;
            }
        }
        if let Err(error) = prune(&schedule.dir, schedule.keep) {
            tracing::error!(%error, dir = %schedule.dir.display(), "failed to delete old backups");
        }
    }
}

/// Name of a periodic backup taken at `ms`: `aura-YYYYMMDD-HHMMSS-mmm` in
/// UTC, so that names sort by time.
fn periodic_name(ms: u64) -> String {
    let seconds = ms / 1000;
    let (year, month, day) = crate::cli::civil_date(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    format!(
        "{PERIODIC_PREFIX}{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{:03}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        ms % 1000
    )
}

/// Checks whether `name` is a directory name that [`periodic_name`] produces.
fn is_periodic_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PERIODIC_PREFIX) else { return false };
    let bytes = rest.as_bytes();
    bytes.len() == 19
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 15 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        })
}

/// Periodic backups in `dir`, oldest first, each with whether it is complete.
fn periodic_backups(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_dir() && name.to_str().is_some_and(is_periodic_name) {
            let path = entry.path();
            let complete = path.join(DB_DIR).is_dir();
            found.push((path, complete));
        }
    }
    found.sort();
    Ok(found)
}

fn newest_backup_time(dir: &Path) -> Option<SystemTime> {
    let backups = periodic_backups(dir).ok()?;
    let (newest, _) = backups.into_iter().rev().find(|(_, complete)| *complete)?;
    std::fs::metadata(newest.join(DB_DIR)).and_then(|metadata| metadata.modified()).ok()
}

/// Deletes incomplete periodic backups and all but the newest `keep` complete ones.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let backups = periodic_backups(dir)?;
    let complete = backups.iter().filter(|(_, complete)| *complete).count();
    let mut excess = complete.saturating_sub(keep);
    for (path, complete) in backups {
        if !complete {
            std::fs::remove_dir_all(&path)?;
            tracing::info!(path = %path.display(), "incomplete backup deleted");
        } else if excess > 0 {
            std::fs::remove_dir_all(&path)?;
            excess -= 1;
            tracing::info!(path = %path.display(), "old backup deleted");
        }
    }
    Ok(())
}

/// Runs `aura backup DEST`: through the running server's admin socket, or
/// directly on the database of a stopped server.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let dest = std::path::absolute(&args.dest)
        .with_context(|| format!("failed to resolve the backup destination {}", args.dest.display()))?;
    let request = AdminRequest::Backup { dest: dest.clone() };
    let report = match admin::send_to_server(&args.data_dir, &request)
        .await
        .context("failed to talk to the running server over its admin socket")?
    {
        Some(AdminResponse::Backup { backup }) => backup,
        Some(AdminResponse::Error { error }) => bail!("{error}"),
        Some(other) => bail!("unexpected response from the server: {other:?}"),
        None => back_up_offline(&args.data_dir, &dest).await?,
    };
    println!(
        "backup written to {}: {} records in {} ms, writes paused for {} ms",
        report.dest.display(),
        report.records(),
        report.millis,
        report.paused_millis
    );
    for (tree, count) in &report.trees {
        println!("  {tree:<16} {count}");
    }
    Ok(())
}

/// Opens a stopped server's database and copies it.
async fn back_up_offline(data_dir: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    if !data_dir.join(DB_DIR).is_dir() {
        bail!("no database in {}: pass the server's --data-dir", data_dir.display());
    }
    let store = Store::open(data_dir, OFFLINE_CACHE_BYTES)?;
    Ok(back_up(&store, dest).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_name_sorts_by_time() {
        // 2024-02-29 12:34:56.789 UTC
        assert_eq!(periodic_name(1_709_210_096_789), "aura-20240229-123456-789");
        assert!(periodic_name(1_709_210_096_789) < periodic_name(1_709_210_097_000));
    }

    #[test]
    fn periodic_name_is_recognized() {
        assert!(is_periodic_name(&periodic_name(now_ms())));
        assert!(!is_periodic_name("aura-manual"));
        assert!(!is_periodic_name("aura-20240229-123456-78x"));
    }
}
