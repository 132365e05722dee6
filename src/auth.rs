//! Accounts, passwords, login sessions, the first-admin setup code and the
//! Origin check.
//!
//! Passwords are stored as argon2id hashes. A session token is 32 random
//! bytes, sent to the client once in hex and stored only as its SHA-256
//! hash. Browsers present it in the `aura_session` cookie, other clients in
//! an `Authorization: Bearer` header; tokens never appear in URLs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hyper::header::{HeaderMap, AUTHORIZATION, COOKIE, HOST, ORIGIN};
use tokio::sync::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::{Config, Registration};
use crate::error::{ApiError, ErrorCode};
use crate::accounts::{Accounts, Identity};
use crate::ids::{now_ms, Sequencer};
use crate::store::{Role, Session, Store, StoreError, User};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "aura_session";

/// Minimum password length in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Maximum password length in bytes; longer input is rejected so that
/// hashing stays cheap.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// File in the data directory that contains the setup code while no admin exists.
pub const SETUP_CODE_FILE: &str = "setup-code";

/// How a request presented its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Cookie,
    Bearer,
}

/// Accounts and sessions.
pub struct Auth {
    config: Arc<Config>,
    store: Arc<Store>,
    sequencer: Arc<Sequencer>,
    accounts: Arc<Accounts>,
    /// The setup code while no admin exists; `None` once one does.
    setup_code: Mutex<Option<String>>,
    /// Whether any admin account exists.
    admin_exists: AtomicBool,
}

impl Auth {
    /// Loads the account state. While no admin exists, writes a new one-time
    /// setup code to `<data-dir>/setup-code` with mode 0600 and logs its path.
    pub fn open(
        config: Arc<Config>,
        store: Arc<Store>,
        sequencer: Arc<Sequencer>,
        accounts: Arc<Accounts>,
    ) -> anyhow::Result<Auth> {
        let admin_exists = accounts.admin_exists();
        let setup_code = if admin_exists {
            let _ = std::fs::remove_file(setup_code_path(&config));
            None
        } else {
            let code = random_hex(12);
            write_private_file(&setup_code_path(&config), &code)?;
            tracing::info!(
                path = %setup_code_path(&config).display(),
                "no admin yet: register with the setup code in this file to become admin"
            );
            Some(code)
        };
        Ok(Auth {
            config,
            store,
            sequencer,
            accounts,
            setup_code: Mutex::new(setup_code),
            admin_exists: AtomicBool::new(admin_exists),
        })
    }

    /// Whether an admin account exists.
    pub fn admin_exists(&self) -> bool {
        self.admin_exists.load(Ordering::Acquire)
    }

    /// Creates an account. The registration that presents the setup code
    /// becomes admin and spends the code; others become members.
    pub async fn register(&self, name: &str, password: &str, setup_code: Option<&str>) -> Result<User, ApiError> {
        validate_username(name)?;
        validate_password(password)?;
        let becomes_admin = match setup_code.filter(|code| !code.is_empty()) {
            Some(code) => {
                self.check_setup_code(code).await?;
                true
            }
            None if self.config.registration == Registration::Closed => {
                return Err(ApiError::forbidden("registration is closed on this server"));
            }
            None => false,
        };

        let password_hash = hash_password(password.to_string()).await?;
        let role = if becomes_admin { Role::Admin } else { Role::Member };

        // Spending the code and creating the account happen under the lock
        // so that two registrations with the code cannot both become admin.
        let mut code = self.setup_code.lock().await;
        if becomes_admin && code.is_none() {
            return Err(ApiError::forbidden("setup code is invalid or already used"));
        }
        let user = self.accounts.create(&self.sequencer, name, password_hash, role).await?;
        if becomes_admin {
            *code = None;
            self.admin_exists.store(true, Ordering::Release);
            let _ = std::fs::remove_file(setup_code_path(&self.config));
            tracing::info!(user = user.id, "first admin registered; setup code removed");
        }
        Ok(user)
    }

    async fn check_setup_code(&self, presented: &str) -> Result<(), ApiError> {
        let mut code = self.setup_code.lock().await;
        // An admin created another way (`aura user add --role admin`) spends the code too.
        if code.is_some() && self.accounts.admin_exists() {
            *code = None;
            self.admin_exists.store(true, Ordering::Release);
            let _ = std::fs::remove_file(setup_code_path(&self.config));
            tracing::info!("an admin exists; setup code removed");
        }
        match code.as_deref() {
            Some(expected) if constant_time_eq(expected.as_bytes(), presented.trim().as_bytes()) => Ok(()),
            _ => Err(ApiError::forbidden("setup code is invalid or already used")),
        }
    }

    /// Checks a username and password and creates a session. Returns the
    /// user and the token. An unknown user and a wrong password get the same error.
    pub async fn login(&self, name: &str, password: &str) -> Result<(User, String), ApiError> {
        let wrong = || ApiError::new(ErrorCode::Unauthorized, "username or password is wrong");
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(wrong());
        }
        let user = self.store.user_by_name(name).map_err(store_error)?;
        // Unknown users still cost one hash check, so timing does not reveal them.
        let hash = user.as_ref().map(|user| user.password_hash.clone());
        let valid = verify_password(password.to_string(), hash).await;
        let Some(user) = user.filter(|_| valid) else {
            return Err(wrong());
        };
        if self.accounts.get(user.id).is_none_or(|current| current.disabled) {
            return Err(ApiError::forbidden("this account is disabled: ask an admin"));
        }

        let token = random_hex(32);
        let now = now_ms();
        let session = Session {
            user: user.id,
            created_ms: now,
            expires_ms: now + self.config.session_ttl.as_millis() as u64,
        };
        self.store
            .put_session(&token_hash(&token), &session)
            .await
            .map_err(store_error)?;
        Ok((user, token))
    }

    /// Revokes a session token.
    pub async fn logout(&self, token: &str) -> Result<(), ApiError> {
        self.store.remove_session(&token_hash(token)).await.map_err(store_error)
    }

    /// The user behind a token, or `None` when the token is unknown or expired.
    pub fn authenticate(&self, token: &str) -> Result<Option<Identity>, ApiError> {
        let Some(session) = self.store.session(&token_hash(token)).map_err(store_error)? else {
            return Ok(None);
        };
        if session.expires_ms <= now_ms() {
            return Ok(None);
        }
        Ok(self.accounts.identity(session.user))
    }

    /// Whether a request that authenticates with the cookie comes from an
    /// allowed Origin: equal to `--public-origin` when set, otherwise the
    /// request's own scheme-less Host.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(ORIGIN).and_then(|value| value.to_str().ok()) else {
            return false;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        match &self.config.public_origin {
            Some(expected) => origin == *expected,
            None => {
                let Some(host) = headers.get(HOST).and_then(|value| value.to_str().ok()) else {
                    return false;
                };
                let host = host.to_ascii_lowercase();
                origin == format!("http://{host}") || origin == format!("https://{host}")
            }
        }
    }

    /// A `Set-Cookie` value that stores `token`, or clears the cookie when `None`.
    pub fn session_cookie(&self, token: Option<&str>) -> String {
        let secure = if self.config.secure_cookie { "; Secure" } else { "" };
        match token {
            Some(token) => format!(
                "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
                self.config.session_ttl.as_secs()
            ),
            None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"),
        }
    }
}

/// Extracts the session token: a bearer header first, then the cookie.
pub fn request_token(headers: &HeaderMap) -> Option<(String, Credential)> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()) {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Some((token.trim().to_string(), Credential::Bearer));
        }
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| (token.to_string(), Credential::Cookie))
}

/// Checks a username: 2 to 32 ASCII letters, digits, `_`, `-` or `.`.
pub fn validate_username(name: &str) -> Result<(), ApiError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !(2..=32).contains(&name.len()) || !valid_chars {
        return Err(ApiError::bad_request(
            "username must be 2 to 32 characters: ASCII letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "password must have at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Hashes a password with argon2id on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "password hashing failed: retry"))
}

/// Verifies a password against a stored hash; with no hash, spends the same
/// time on a dummy hash and returns false.
async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let Some(hash) = hash else {
            let salt = SaltString::generate(&mut OsRng);
            let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
            return false;
        };
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// SHA-256 of a token: the key its session is stored under.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn setup_code_path(config: &Config) -> PathBuf {
    config.data_dir.join(SETUP_CODE_FILE)
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{contents}")
}

fn store_error(error: StoreError) -> ApiError {
    tracing::error!(%error, "account storage failed");
    ApiError::new(ErrorCode::Unavailable, "account storage is unavailable: retry later")
}
