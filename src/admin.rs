//! User administration from the command line: `aura user ...`.
//!
//! While the server runs it listens on a Unix socket, `<data-dir>/admin.sock`
//! with mode 0600, so only the account that runs the server (or root) can
//! use it. The CLI sends one JSON request line and reads one JSON response
//! line; the server applies the change and pushes it to live connections.
//! While the server is stopped, the CLI opens the database itself and
//! applies the same change directly.
//!
//! The same socket serves `aura backup`: the server writes a consistent
//! copy of its database into the directory that the request names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::accounts::{Accounts, Identity, UserPatch};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::ids::Sequencer;
use crate::protocol::UserView;
use crate::server::App;
use crate::store::Role;
use crate::throttle::Throttle;

/// File name of the admin socket in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Maximum size of one request line on the admin socket, in bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// One administrative operation on a user, named by username.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminRequest {
    List,
    Add { name: String, password: String, role: Role },
    SetRole { name: String, role: Role },
    SetTier { name: String, tier: String, expires_at: Option<u64> },
    Mute { name: String, until: Option<u64> },
    Disable { name: String, disabled: bool },
    ResetPassword { name: String, password: String },
    /// Write a backup into `dest`, an absolute path that the server's
    /// account may create or that is an empty directory.
    Backup { dest: PathBuf },
    /// Ends the failed-login lock of a username.
    Unlock { name: String },
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdminResponse {
    Users { users: Vec<UserView> },
    User { user: UserView },
    Backup { backup: crate::backup::BackupReport },
    /// Whether a failed-login lock or failure count was cleared.
    Unlocked { name: String, unlocked: bool },
    Error { error: String },
}

/// What a request is applied to: the running server, or the database alone.
pub struct Target<'a> {
    pub accounts: &'a Accounts,
    pub sequencer: &'a Sequencer,
    /// Present while the server runs, so changes reach live connections.
    pub hub: Option<&'a Hub>,
    /// Present while the server runs; login locks live only in its memory.
    pub throttle: Option<&'a Throttle>,
}

/// The actor of CLI changes: whoever may open the socket or the data directory.
fn operator() -> Identity {
    Identity {
        id: 0,
        name: "operator".into(),
        role: Role::Admin,
        tier_rank: usize::MAX,
        muted_until_ms: None,
    }
}

/// Applies a request and returns the response.
pub async fn execute(target: &Target<'_>, request: AdminRequest) -> AdminResponse {
    match apply(target, request).await {
        Ok(response) => response,
        Err(error) => AdminResponse::Error { error: error.message },
    }
}

async fn apply(target: &Target<'_>, request: AdminRequest) -> Result<AdminResponse, ApiError> {
    let accounts = target.accounts;
    let find = |name: &str| {
        accounts
            .find_by_name(name)
            .ok_or_else(|| ApiError::not_found(format!("user {name:?} not found")))
    };
    let patch = |patch: UserPatch, name: String| async move {
        let user = find(&name)?;
        let updated = accounts.patch(&operator(), user.id, &patch).await?;
        if let Some(hub) = target.hub {
            hub.user_changed(&updated);
        }
        Ok(AdminResponse::User { user: UserView::of(&updated) })
    };

    match request {
        AdminRequest::List => Ok(AdminResponse::Users {
            users: accounts.list().iter().map(|user| UserView::of(user)).collect(),
        }),
        AdminRequest::Add { name, password, role } => {
            crate::auth::validate_username(&name)?;
            crate::auth::validate_password(&password)?;
            let hash = crate::auth::hash_password(password).await?;
            let user = accounts.create(target.sequencer, &name, hash, role).await?;
            Ok(AdminResponse::User { user: UserView::of(&user) })
        }
        AdminRequest::SetRole { name, role } => patch(UserPatch { role: Some(role), ..Default::default() }, name).await,
        AdminRequest::SetTier { name, tier, expires_at } => {
            let change = UserPatch {
                tier: Some(tier),
                tier_expires_at: Some(expires_at),
                ..Default::default()
            };
            patch(change, name).await
        }
        AdminRequest::Mute { name, until } => patch(UserPatch { muted_until: Some(until), ..Default::default() }, name).await,
        AdminRequest::Disable { name, disabled } => {
            patch(UserPatch { disabled: Some(disabled), ..Default::default() }, name).await
        }
        AdminRequest::ResetPassword { name, password } => {
            crate::auth::validate_password(&password)?;
            let user = find(&name)?;
            let hash = crate::auth::hash_password(password).await?;
            let updated = accounts.reset_password(&operator(), user.id, hash).await?;
            Ok(AdminResponse::User { user: UserView::of(&updated) })
        }
        AdminRequest::Backup { .. } => Err(ApiError::bad_request("a backup is not a user operation")),
        AdminRequest::Unlock { name } => {
            let user = find(&name)?;
            // A stopped server holds no locks: they end with the process.
            let unlocked = target.throttle.is_some_and(|throttle| throttle.unlock(&user.name));
            Ok(AdminResponse::Unlocked { name: user.name.clone(), unlocked })
        }
    }
}

/// Path of the admin socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the admin socket with mode 0600, replacing a stale file left by a
/// crashed run. The caller holds the database lock, so no other server owns it.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves admin requests until shutdown.
pub async fn serve(app: Arc<App>, listener: UnixListener, sequencer: Arc<Sequencer>) {
    let mut shutdown = app.shutdown.clone();
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let sequencer = sequencer.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_one(&app, &sequencer, stream).await {
                tracing::warn!(%error, "admin request failed");
            }
        });
    }
    let _ = std::fs::remove_file(socket_path(&app.config.data_dir));
}

async fn serve_one(app: &App, sequencer: &Sequencer, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(AdminRequest::Backup { dest }) => {
            tracing::info!(command = "backup", dest = %dest.display(), "admin socket request");
            match crate::backup::back_up(&app.store, &dest).await {
                Ok(backup) => {
                    tracing::info!(dest = %dest.display(), records = backup.records(), millis = backup.millis, paused_millis = backup.paused_millis, "backup written");
                    AdminResponse::Backup { backup }
                }
                Err(error) => {
                    tracing::error!(%error, dest = %dest.display(), "backup failed");
                    AdminResponse::Error { error: error.to_string() }
                }
            }
        }
        Ok(request) => {
            tracing::info!(command = ?command_name(&request), "admin socket request");
            let target = Target {
                accounts: &app.accounts,
                sequencer,
                hub: Some(&app.hub),
                throttle: Some(&app.throttle),
            };
            execute(&target, request).await
        }
        Err(error) => AdminResponse::Error {
            error: format!("invalid admin request: {error}"),
        },
    };
    let mut bytes = serde_json::to_vec(&response).expect("admin responses serialize");
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

fn command_name(request: &AdminRequest) -> &'static str {
    match request {
        AdminRequest::List => "list",
        AdminRequest::Add { .. } => "add",
        AdminRequest::SetRole { .. } => "set-role",
        AdminRequest::SetTier { .. } => "set-tier",
        AdminRequest::Mute { .. } => "mute",
        AdminRequest::Disable { .. } => "disable",
        AdminRequest::ResetPassword { .. } => "reset-password",
        AdminRequest::Backup { .. } => "backup",
        AdminRequest::Unlock { .. } => "unlock",
    }
}

/// Sends a request to a running server. Returns `Ok(None)` when no server
/// listens on the socket.
pub async fn send_to_server(data_dir: &Path, request: &AdminRequest) -> std::io::Result<Option<AdminResponse>> {
    let stream = match UnixStream::connect(socket_path(data_dir)).await {
        Ok(stream) => stream,
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let (read, mut write) = stream.into_split();
    let mut bytes = serde_json::to_vec(request).expect("admin requests serialize");
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|error| std::io::Error::other(format!("invalid response from the server: {error}")))
}
