//! The user directory: every account in memory, roles and tiers, and the
//! changes an admin (or moderator) makes to users.
//!
//! The directory loads all users at start-up, so permission checks on the
//! send path read memory only. Every change is written to the database and
//! flushed before the directory and the live connections see it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{now_ms, Sequencer};
use crate::store::{Role, Store, StoreError, User};

/// The authenticated user behind a request or connection, as of the moment
/// the operation started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    pub name: String,
    pub role: Role,
    /// Rank of the user's effective tier in `--tiers`; 0 once the tier expired.
    pub tier_rank: usize,
    /// Until when the user may not send, ms since the Unix epoch.
    pub muted_until_ms: Option<u64>,
}

impl Identity {
    /// Whether the user is muted now.
    pub fn is_muted(&self) -> bool {
        self.muted_until_ms.is_some_and(|until| until > now_ms())
    }
}

/// A change to one user, from the HTTP API, the admin socket or the CLI.
/// Absent fields stay as they are; a `null` expiry or mute clears it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserPatch {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default, with = "double_option")]
    pub tier_expires_at: Option<Option<u64>>,
    #[serde(default, with = "double_option")]
    pub muted_until: Option<Option<u64>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(Some)
    }
}

impl UserPatch {
    /// Whether the patch only mutes or unmutes, which moderators may do.
    pub fn is_mute_only(&self) -> bool {
        self.role.is_none() && self.tier.is_none() && self.tier_expires_at.is_none() && self.disabled.is_none()
    }
}

/// All accounts, by id.
pub struct Accounts {
    config: Arc<Config>,
    store: Arc<Store>,
    users: RwLock<HashMap<u64, Arc<User>>>,
    /// Woken when a tier expiry is set, so the expiry task re-plans.
    pub expiry_changed: Notify,
}

impl Accounts {
    /// Loads every user from the database.
    pub fn load(config: Arc<Config>, store: Arc<Store>) -> Result<Accounts, StoreError> {
        let users = store
            .users()?
            .into_iter()
            .map(|user| (user.id, Arc::new(user)))
            .collect();
        Ok(Accounts {
            config,
            store,
            users: RwLock::new(users),
            expiry_changed: Notify::new(),
        })
    }

    /// A user by id.
    pub fn get(&self, id: u64) -> Option<Arc<User>> {
        self.users.read().get(&id).cloned()
    }

    /// Every user, in id order.
    pub fn list(&self) -> Vec<Arc<User>> {
        let mut users: Vec<_> = self.users.read().values().cloned().collect();
        users.sort_by_key(|user| user.id);
        users
    }

    /// Whether an admin exists.
    pub fn admin_exists(&self) -> bool {
        self.users.read().values().any(|user| user.role == Role::Admin && !user.disabled)
    }

    /// The identity of an enabled user, or `None` for a disabled or deleted one.
    pub fn identity(&self, id: u64) -> Option<Identity> {
        let user = self.get(id)?;
        (!user.disabled).then(|| identity_of(&self.config, &user))
    }

    /// Creates an account in the first tier, stores it and flushes.
    /// Returns `conflict` when the name is taken without regard to case.
    pub async fn create(
        &self,
        sequencer: &Sequencer,
        name: &str,
        password_hash: String,
        role: Role,
    ) -> Result<User, ApiError> {
        let user = User {
            id: sequencer.next(),
            name: name.to_string(),
            password_hash,
            role,
            created_ms: now_ms(),
            tier: self.config.first_tier().to_string(),
            tier_expires_ms: None,
            muted_until_ms: None,
            disabled: false,
            invisible: false,
        };
        let inserted = self.store.insert_user(&user).await.map_err(store_error)?;
        if !inserted {
            return Err(ApiError::new(ErrorCode::Conflict, format!("username {name:?} is taken")));
        }
        self.users.write().insert(user.id, Arc::new(user.clone()));
        if role == Role::Admin {
            self.remove_setup_code_file();
        }
        Ok(user)
    }

    /// Removes the first-admin setup code file once an admin exists; the
    /// registration path also stops accepting the code.
    fn remove_setup_code_file(&self) {
        let path = self.config.data_dir.join(crate::auth::SETUP_CODE_FILE);
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!(path = %path.display(), "an admin exists; setup code removed");
        }
    }

    /// A user by name, without regard to case.
    pub fn find_by_name(&self, name: &str) -> Option<Arc<User>> {
        self.users
            .read()
            .values()
            .find(|user| user.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    /// Applies a patch on behalf of `actor` and returns the updated user.
    /// Admins may change anything; moderators may only mute or unmute members.
    pub async fn patch(&self, actor: &Identity, id: u64, patch: &UserPatch) -> Result<Arc<User>, ApiError> {
        let target = self.get(id).ok_or_else(|| ApiError::not_found("user not found"))?;
        match actor.role {
            Role::Admin => {}
            Role::Moderator if patch.is_mute_only() && target.role == Role::Member => {}
            _ => return Err(ApiError::role_required("admin")),
        }
        let mut updated = (*target).clone();
        apply_patch(&self.config, &mut updated, patch)?;
        self.check_keeps_an_admin(&target, &updated)?;
        self.store.put_user(&updated).await.map_err(store_error)?;
        let updated = Arc::new(updated);
        self.users.write().insert(id, updated.clone());
        if updated.role == Role::Admin && !updated.disabled {
            self.remove_setup_code_file();
        }
        if patch.tier_expires_at.is_some() || patch.tier.is_some() {
            self.expiry_changed.notify_one();
        }
        if updated.disabled {
            self.store.remove_sessions_of(id).map_err(store_error)?;
            self.store.flush().await.map_err(store_error)?;
        }
        Ok(updated)
    }

    /// Deletes a user, their name and sessions. Only admins may.
    pub async fn delete(&self, actor: &Identity, id: u64) -> Result<Arc<User>, ApiError> {
        if actor.role != Role::Admin {
            return Err(ApiError::role_required("admin"));
        }
        let target = self.get(id).ok_or_else(|| ApiError::not_found("user not found"))?;
        if target.role == Role::Admin && !target.disabled && self.enabled_admins() <= 1 {
            return Err(last_admin_error());
        }
        self.store.delete_user(&target).await.map_err(store_error)?;
        self.users.write().remove(&id);
        Ok(target)
    }

    /// Sets a new password and ends the user's sessions. Only admins may.
    pub async fn reset_password(&self, actor: &Identity, id: u64, password_hash: String) -> Result<Arc<User>, ApiError> {
        if actor.role != Role::Admin {
            return Err(ApiError::role_required("admin"));
        }
        let target = self.get(id).ok_or_else(|| ApiError::not_found("user not found"))?;
        let updated = User {
            password_hash,
            ..(*target).clone()
        };
        self.store.put_user(&updated).await.map_err(store_error)?;
        self.store.remove_sessions_of(id).map_err(store_error)?;
        self.store.flush().await.map_err(store_error)?;
        let updated = Arc::new(updated);
        self.users.write().insert(id, updated.clone());
        Ok(updated)
    }

    /// Sets the user's own "appear offline" choice, stores it and flushes,
    /// and returns the updated user.
    pub async fn set_invisible(&self, id: u64, invisible: bool) -> Result<Arc<User>, ApiError> {
        let target = self.get(id).ok_or_else(ApiError::unauthorized)?;
        if target.invisible == invisible {
            return Ok(target);
        }
        let updated = User {
            invisible,
            ..(*target).clone()
        };
        self.store.put_user(&updated).await.map_err(store_error)?;
        let updated = Arc::new(updated);
        self.users.write().insert(id, updated.clone());
        Ok(updated)
    }

    /// Moves every user whose tier expired by `now_ms` to the first tier and
    /// returns them. Also returns the next expiry still ahead, if any.
    pub async fn expire_tiers(&self, now_ms: u64) -> (Vec<Arc<User>>, Option<u64>) {
        let (due, next) = {
            let users = self.users.read();
            let due: Vec<Arc<User>> = users
                .values()
                .filter(|user| user.tier_expires_ms.is_some_and(|at| at <= now_ms))
                .cloned()
                .collect();
            let next = users
                .values()
                .filter_map(|user| user.tier_expires_ms)
                .filter(|&at| at > now_ms)
                .min();
            (due, next)
        };
        let mut expired = Vec::new();
        for user in due {
            let updated = User {
                tier: self.config.first_tier().to_string(),
                tier_expires_ms: None,
                ..(*user).clone()
            };
            if let Err(error) = self.store.put_user(&updated).await {
                // Memory still changes below, so access ends now; the next
                // start expires the stored tier again.
                tracing::error!(%error, user = user.id, "failed to store an expired tier");
            }
            let updated = Arc::new(updated);
            self.users.write().insert(user.id, updated.clone());
            tracing::info!(user = user.id, "tier expired");
            expired.push(updated);
        }
        (expired, next)
    }

    fn enabled_admins(&self) -> usize {
        self.users
            .read()
            .values()
            .filter(|user| user.role == Role::Admin && !user.disabled)
            .count()
    }

    fn check_keeps_an_admin(&self, before: &User, after: &User) -> Result<(), ApiError> {
        let was_admin = before.role == Role::Admin && !before.disabled;
        let is_admin = after.role == Role::Admin && !after.disabled;
        if was_admin && !is_admin && self.enabled_admins() <= 1 {
            return Err(last_admin_error());
        }
        Ok(())
    }
}

/// The identity of a user: role, effective tier and mute.
pub fn identity_of(config: &Config, user: &User) -> Identity {
    let expired = user.tier_expires_ms.is_some_and(|at| at <= now_ms());
    Identity {
        id: user.id,
        name: user.name.clone(),
        role: user.role,
        tier_rank: if expired { 0 } else { config.tier_rank(&user.tier) },
        muted_until_ms: user.muted_until_ms,
    }
}

/// Applies a patch to a user record after checking its values.
pub fn apply_patch(config: &Config, user: &mut User, patch: &UserPatch) -> Result<(), ApiError> {
    if let Some(tier) = &patch.tier {
        if !config.tiers.contains(tier) {
            return Err(ApiError::bad_request(format!(
                "tier {tier:?} is unknown: expected one of {}",
                config.tiers.join(", ")
            )));
        }
        user.tier = tier.clone();
    }
    if let Some(role) = patch.role {
        user.role = role;
    }
    if let Some(expires) = patch.tier_expires_at {
        user.tier_expires_ms = expires;
    }
    if let Some(until) = patch.muted_until {
        user.muted_until_ms = until;
    }
    if let Some(disabled) = patch.disabled {
        user.disabled = disabled;
    }
    Ok(())
}

fn last_admin_error() -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        "this is the last admin: make another user admin first",
    )
}

fn store_error(error: StoreError) -> ApiError {
    tracing::error!(%error, "account storage failed");
    ApiError::new(ErrorCode::Unavailable, "account storage is unavailable: retry later")
}
