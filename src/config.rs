//! Command-line flags and the validated server configuration.
//!
//! Every flag can also be set through an environment variable named
//! `AURA_<FLAG>` (for example `AURA_LISTEN`). Flags are parsed once by clap
//! and checked once by [`ServeArgs::validate`], whose errors name the flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Aura: a self-hosted real-time community chat server.
#[derive(Debug, Parser)]
#[command(name = "aura", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the `aura` binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the chat server. A flag given twice takes its last value.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Manage users, through the running server or directly on a stopped one.
    User(UserArgs),
    /// Write a consistent copy of the database into a new data directory,
    /// through the running server or directly from a stopped one.
    Backup(BackupArgs),
    /// Check that every record of a stopped server's database decodes and
    /// that every index agrees with the records; exits 1 on any problem.
    Verify(VerifyArgs),
}

/// Flags of `aura backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Directory to create the copy in. It must not exist or be empty; it
    /// becomes a data directory that `aura serve --data-dir` starts from.
    pub dest: PathBuf,

    /// Data directory of the server to back up.
    #[arg(long, env = "AURA_DATA_DIR", default_value = "./aura-data")]
    pub data_dir: PathBuf,
}

/// Flags of `aura verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Data directory to check, such as a backup. A running server's
    /// directory is refused: back it up and check the copy.
    pub dir: PathBuf,
}

/// Format of the log lines on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, with fields as key=value.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Flags of `aura user`.
#[derive(Debug, Clone, clap::Args)]
pub struct UserArgs {
    /// Data directory of the server.
    #[arg(long, env = "AURA_DATA_DIR", default_value = "./aura-data", global = true)]
    pub data_dir: PathBuf,

    /// Subscription tiers, as given to `aura serve`; used to check tier
    /// names while the server is stopped.
    #[arg(long, env = "AURA_TIERS", default_value = "free,pro,elite", value_delimiter = ',', global = true)]
    pub tiers: Vec<String>,

    #[command(subcommand)]
    pub command: UserCommand,
}

/// The user operations. Passwords are read from a prompt, or from the
/// first line of standard input when it is not a terminal; never from an argument.
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// List every user with role, tier, mute and state.
    List,
    /// Create a user.
    Add {
        name: String,
        /// member, moderator or admin.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Set a user's role: member, moderator or admin.
    SetRole { name: String, role: String },
    /// Set a user's tier, optionally ending after a number of days.
    SetTier {
        name: String,
        tier: String,
        /// Days until the tier ends and the user falls to the first tier; fractions allowed.
        #[arg(long)]
        days: Option<f64>,
    },
    /// Mute a user for a number of minutes; 0 ends a mute.
    Mute {
        name: String,
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Disable a user, ending their sessions; --enable reverses it.
    Disable {
        name: String,
        #[arg(long)]
        enable: bool,
    },
    /// Set a new password and end the user's sessions.
    ResetPassword { name: String },
    /// End the lock that failed logins put on a username. Locks live in
    /// the running server's memory, so a stopped server holds none.
    Unlock { name: String },
}

/// Whether strangers may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Anyone who reaches the server may register as a member.
    Open,
    /// Only the first admin, with the setup code, may register.
    Closed,
}

/// Flags of `aura serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory that holds the sled database and the setup code. Created if missing.
    #[arg(long, env = "AURA_DATA_DIR", default_value = "./aura-data")]
    pub data_dir: PathBuf,

    /// Address and port to listen on for HTTP and WebSocket clients: an IP
    /// address, or a host name such as localhost that resolves to one, with
    /// a port. A name is resolved once at start-up and the first address is used.
    #[arg(long, env = "AURA_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Origin that browsers use to reach the server, such as https://chat.example.com.
    /// When unset, a browser request must come from the host and port in its Host header.
    #[arg(long, env = "AURA_PUBLIC_ORIGIN")]
    pub public_origin: Option<String>,

    /// Maximum message length in Unicode scalar values, after trimming.
    #[arg(long, env = "AURA_MAX_MESSAGE_CHARS", default_value_t = 4000)]
    pub max_message_chars: usize,

    /// Maximum size in bytes of one WebSocket message, all fragments together,
    /// and of one HTTP request body.
    #[arg(long, env = "AURA_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,

    /// Outbound queue per WebSocket connection, in frames. A connection whose
    /// queue fills is closed with code 4008 and resumes from its last rev.
    #[arg(long, env = "AURA_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// Outbound queue per WebSocket connection, in MiB of frames. A frame
    /// that would go over it closes the connection with code 4008, and the
    /// server stops reading a connection's requests while more than half of
    /// it is queued. Keep it above twice the largest reply, a history
    /// page of 200 messages at --max-message-chars (about 3.2 MB at the
    /// defaults), so that a reply never closes a connection that reads.
    #[arg(long, env = "AURA_SEND_QUEUE_MB", default_value_t = 16)]
    pub send_queue_mb: usize,

    /// Interval in milliseconds at which clients send heartbeats. A connection
    /// silent for 2.5 times this interval is closed with code 4009.
    #[arg(long, env = "AURA_HEARTBEAT_MS", default_value_t = 4000)]
    pub heartbeat_ms: u64,

    /// Recent changes kept in memory per channel, in messages, so that
    /// subscribers resume without reading the database.
    #[arg(long, env = "AURA_HISTORY_CACHE", default_value_t = 512)]
    pub history_cache: usize,

    /// Capacity of sled's page cache, in MiB.
    #[arg(long, env = "AURA_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,

    /// Whether anyone may register (open) or only the first admin (closed).
    #[arg(long, env = "AURA_REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Lifetime of a login session, in days.
    #[arg(long, env = "AURA_SESSION_DAYS", default_value_t = 30)]
    pub session_days: u64,

    /// Subscription tiers from lowest to highest, comma-separated. Users
    /// start in the first; channels name the lowest tier that may read them.
    #[arg(long, env = "AURA_TIERS", default_value = "free,pro,elite", value_delimiter = ',')]
    pub tiers: Vec<String>,

    /// Messages a user may send in a burst before the rate limit applies.
    #[arg(long, env = "AURA_SEND_BURST", default_value_t = 10)]
    pub send_burst: u32,

    /// Messages per second a user may send once the burst is spent.
    #[arg(long, env = "AURA_SEND_PER_SECOND", default_value_t = 1.0)]
    pub send_per_second: f64,

    /// Maximum time in milliseconds that shutdown waits for connections to
    /// close and queued writes to reach disk.
    #[arg(long, env = "AURA_DRAIN_MS", default_value_t = 10_000)]
    pub drain_ms: u64,

    /// Log line format on standard error: text or json.
    #[arg(long, env = "AURA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Bearer token that lets any client read GET /metrics. Without it,
    /// metrics are served only to loopback clients that come without a
    /// proxy's forwarding header. 16 to 256 visible ASCII characters.
    #[arg(long, env = "AURA_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Free space in MiB that writes leave on the data directory's
    /// filesystem; below it, sends get `unavailable` before anything is
    /// written. 0 turns the check off.
    #[arg(long, env = "AURA_MIN_FREE_MB", default_value_t = 64)]
    pub min_free_mb: u64,

    /// Directory for periodic backups, each a data directory named
    /// aura-YYYYMMDD-HHMMSS-mmm (UTC). Unset: no periodic backups.
    #[arg(long, env = "AURA_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Interval between periodic backups: a number with s, m, h or d, such as 6h.
    #[arg(long, env = "AURA_BACKUP_EVERY", default_value = "24h", value_parser = parse_interval)]
    pub backup_every: Duration,

    /// Periodic backups to keep; older ones are deleted.
    #[arg(long, env = "AURA_BACKUP_KEEP", default_value_t = 7)]
    pub backup_keep: usize,

    /// Time in milliseconds that a user stays online after their last
    /// connection ends, so that a page reload does not show them offline.
    #[arg(long, env = "AURA_PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,

    /// Maximum open WebSocket connections per user, across all tabs and
    /// devices. The next one is closed at once with code 4029.
    #[arg(long, env = "AURA_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,

    /// Maximum open TCP connections in total. A connection over the limit
    /// gets HTTP 503 and is closed.
    #[arg(long, env = "AURA_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Maximum open connections from one client address; an IPv6 /64
    /// counts as one address. A connection over the limit gets HTTP 429.
    /// Behind --trusted-proxy this counts WebSockets per forwarded address.
    #[arg(long, env = "AURA_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Maximum API requests handled at once, long polls not counted. A
    /// request over the limit gets HTTP 503 with Retry-After.
    #[arg(long, env = "AURA_MAX_API_CONCURRENCY", default_value_t = 256)]
    pub max_api_concurrency: usize,

    /// Maximum long polls (GET .../messages with wait above 0) waiting at
    /// once. A long poll over the limit gets HTTP 503 with Retry-After.
    #[arg(long, env = "AURA_MAX_LONG_POLLS", default_value_t = 2048)]
    pub max_long_polls: usize,

    /// Maximum argon2 password hashes computed at once, by logins,
    /// registrations and password resets. Each uses about 19 MiB; others
    /// wait up to 5 seconds, then get HTTP 503.
    #[arg(long, env = "AURA_MAX_PASSWORD_HASHES", default_value_t = 8)]
    pub max_password_hashes: usize,

    /// Maximum size of an HTTP request head (request line and headers), in
    /// bytes. A larger head gets HTTP 431.
    #[arg(long, env = "AURA_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: usize,

    /// Time in milliseconds allowed to receive an HTTP request head, counted
    /// from when the server starts waiting for it. A connection that takes
    /// longer is closed without a response.
    #[arg(long, env = "AURA_HEADER_READ_TIMEOUT_MS", default_value_t = 15_000)]
    pub header_read_timeout_ms: u64,

    /// Time in milliseconds allowed to receive an HTTP request body, counted
    /// from when the handler starts reading it. A slower body gets HTTP 408.
    #[arg(long, env = "AURA_BODY_READ_TIMEOUT_MS", default_value_t = 15_000)]
    pub body_read_timeout_ms: u64,

    /// Time in milliseconds after which an HTTP keep-alive connection with
    /// no request in progress is closed.
    #[arg(long, env = "AURA_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 10_000)]
    pub keep_alive_timeout_ms: u64,

    /// Maximum number of frames in one fragmented WebSocket message. A
    /// message with more is closed with code 1009.
    #[arg(long, env = "AURA_MAX_FRAGMENTS", default_value_t = 128)]
    pub max_fragments: usize,

    /// Maximum time in milliseconds from the first to the last frame of a
    /// fragmented WebSocket message. A slower message is closed with code 1008.
    #[arg(long, env = "AURA_FRAGMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub fragment_timeout_ms: u64,

    /// Failed logins for one username after which each further attempt
    /// must wait, from 1 second doubling with every failure. A client
    /// address gets four times as many.
    #[arg(long, env = "AURA_LOGIN_DELAY_AFTER", default_value_t = 5)]
    pub login_delay_after: u32,

    /// Failed logins for one username that lock it for --login-lock-minutes.
    /// A client address gets four times as many.
    #[arg(long, env = "AURA_LOGIN_LOCK_AFTER", default_value_t = 10)]
    pub login_lock_after: u32,

    /// Duration of a login lock, in minutes; also how long a failure is
    /// remembered. `aura user unlock NAME` ends an account's lock early.
    #[arg(long, env = "AURA_LOGIN_LOCK_MINUTES", default_value_t = 15)]
    pub login_lock_minutes: u64,

    /// Registrations accepted from one client address per hour, which is
    /// also the burst. Attempts over the limit get HTTP 429.
    #[arg(long, env = "AURA_REGISTRATIONS_PER_HOUR", default_value_t = 20)]
    pub registrations_per_hour: u32,

    /// IP addresses of reverse proxies, comma-separated. For connections
    /// from these addresses the client address is the last entry of
    /// X-Forwarded-For. Unset by default: the TCP peer is the client.
    #[arg(long, env = "AURA_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<IpAddr>,
}

/// Errors in flags, each naming the flag and the accepted range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} is {value}, expected a value from {min} to {max}")]
    OutOfRange {
        flag: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("--tiers {0:?} is invalid: expected 1 to 32 distinct names of 1 to 32 letters, digits, '_' or '-'")]
    Tiers(String),
    #[error("--send-per-second is {0}, expected a number from 0.001 to 100000")]
    SendRate(f64),
    #[error("--public-origin {0:?} is invalid: expected scheme://host[:port] with http or https and no path")]
    PublicOrigin(String),
    #[error("--metrics-token is invalid: expected 16 to 256 visible ASCII characters")]
    MetricsToken,
    #[error("--login-delay-after is {delay_after}, expected at most --login-lock-after ({lock_after})")]
    LoginThresholds { delay_after: u32, lock_after: u32 },
}

/// The validated configuration that the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the sled database and the setup code file.
    pub data_dir: PathBuf,
    /// Origin browsers must send, lowercased, without a trailing slash; `None`
    /// means the origin must match the request's Host header.
    pub public_origin: Option<String>,
    /// Whether the session cookie carries the Secure attribute (https origin).
    pub secure_cookie: bool,
    /// Maximum message length in Unicode scalar values.
    pub max_message_chars: usize,
    /// Maximum WebSocket message and HTTP body size, in bytes.
    pub max_frame_bytes: usize,
    /// Outbound queue capacity per connection, in frames.
    pub send_queue: usize,
    /// Outbound queue capacity per connection, in bytes of frames.
    pub send_queue_bytes: usize,
    /// Client heartbeat interval.
    pub heartbeat: Duration,
    /// Changes cached in memory per channel.
    pub history_cache: usize,
    /// sled page cache capacity in bytes.
    pub cache_bytes: u64,
    /// Registration policy.
    pub registration: Registration,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
    /// Deadline for the shutdown drain.
    pub drain: Duration,
    /// Tier names from lowest to highest; never empty.
    pub tiers: Vec<String>,
    /// Send rate limit: burst size in messages.
    pub send_burst: u32,
    /// Send rate limit: refill rate in messages per second.
    pub send_per_second: f64,
    /// Open TCP connections allowed in total.
    pub max_connections: usize,
    /// Open connections allowed per client address (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// API requests handled at once, long polls not counted.
    pub max_api_concurrency: usize,
    /// Long polls waiting at once.
    pub max_long_polls: usize,
    /// Password hashes computed at once.
    pub max_password_hashes: usize,
    /// Maximum HTTP request head size, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed to receive an HTTP request head.
    pub header_read_timeout: Duration,
    /// Time allowed to receive an HTTP request body.
    pub body_read_timeout: Duration,
    /// Idle time after which a keep-alive connection is closed.
    pub keep_alive_timeout: Duration,
    /// Frames allowed in one fragmented WebSocket message.
    pub max_fragments: usize,
    /// Time allowed from the first to the last frame of a fragmented message.
    pub fragment_timeout: Duration,
    /// Failed logins per username before attempts are delayed.
    pub login_delay_after: u32,
    /// Failed logins per username that lock it.
    pub login_lock_after: u32,
    /// Duration of a login lock, and how long a failure is remembered.
    pub login_lock: Duration,
    /// Registrations accepted per client address per hour.
    pub registrations_per_hour: u32,
    /// Reverse proxies whose X-Forwarded-For names the client; empty when
    /// the TCP peer is the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a user stays online after their last connection ends.
    pub presence_grace: Duration,
    /// Maximum open WebSocket connections per user; at least 1.
    pub max_connections_per_user: usize,
    /// Bearer token that grants GET /metrics from any address.
    pub metrics_token: Option<String>,
    /// Free bytes that writes leave on the data directory's filesystem; 0
    /// turns the check off.
    pub min_free_bytes: u64,
    /// Periodic backups, when --backup-dir is set.
    pub backup: Option<BackupSchedule>,
}

/// Where, how often and how many periodic backups are written.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// Directory that holds one data directory per backup.
    pub dir: PathBuf,
    /// Interval between backups.
    pub every: Duration,
    /// Backups kept; older ones are deleted after each new one.
    pub keep: usize,
}

impl Config {
    /// Rank of a tier name; an unknown name ranks as the first tier.
    pub fn tier_rank(&self, tier: &str) -> usize {
        self.tiers.iter().position(|name| name == tier).unwrap_or(0)
    }

    /// The first tier, which users fall to when their tier expires.
    pub fn first_tier(&self) -> &str {
        &self.tiers[0]
    }
}

impl ServeArgs {
    /// Returns the flags' defaults with the given data directory and port 0 on
    /// loopback, as used by tests that run the server in-process.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let Command::Serve(mut serve) = Cli::parse_from(["aura", "serve"]).command else {
            unreachable!("the arguments name the serve subcommand");
        };
        serve.data_dir = data_dir.into();
        serve.listen = "127.0.0.1:0".parse().expect("loopback address parses");
        serve
    }

    /// Checks every flag and returns the configuration, or an error naming the flag.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        check_range("max-message-chars", self.max_message_chars as u64, 1, 100_000)?;
        check_range("max-frame-bytes", self.max_frame_bytes as u64, 1024, 16 << 20)?;
        check_range("send-queue", self.send_queue as u64, 16, 1_000_000)?;
        check_range("send-queue-mb", self.send_queue_mb as u64, 1, 4096)?;
        check_range("heartbeat-ms", self.heartbeat_ms, 100, 600_000)?;
        check_range("history-cache", self.history_cache as u64, 0, 1_000_000)?;
        check_range("cache-mb", self.cache_mb, 1, 1 << 20)?;
        check_range("session-days", self.session_days, 1, 3650)?;
        check_range("drain-ms", self.drain_ms, 100, 600_000)?;
        check_range("send-burst", self.send_burst as u64, 1, 1_000_000)?;
        check_range("presence-grace-ms", self.presence_grace_ms, 0, 600_000)?;
        check_range("max-connections-per-user", self.max_connections_per_user as u64, 1, 100_000)?;
        check_range("max-connections", self.max_connections as u64, 1, 1_000_000)?;
        check_range("max-connections-per-ip", self.max_connections_per_ip as u64, 1, 1_000_000)?;
        check_range("max-api-concurrency", self.max_api_concurrency as u64, 1, 100_000)?;
        check_range("max-long-polls", self.max_long_polls as u64, 1, 1_000_000)?;
        check_range("max-password-hashes", self.max_password_hashes as u64, 1, 1024)?;
        check_range("max-header-bytes", self.max_header_bytes as u64, 1024, 1 << 20)?;
        check_range("header-read-timeout-ms", self.header_read_timeout_ms, 10, 600_000)?;
        check_range("body-read-timeout-ms", self.body_read_timeout_ms, 10, 600_000)?;
        check_range("keep-alive-timeout-ms", self.keep_alive_timeout_ms, 10, 3_600_000)?;
        check_range("max-fragments", self.max_fragments as u64, 1, 1_000_000)?;
        check_range("fragment-timeout-ms", self.fragment_timeout_ms, 100, 600_000)?;
        check_range("login-delay-after", self.login_delay_after as u64, 1, 1_000_000)?;
        check_range("login-lock-after", self.login_lock_after as u64, 1, 1_000_000)?;
        check_range("login-lock-minutes", self.login_lock_minutes, 1, 10_080)?;
        check_range("registrations-per-hour", self.registrations_per_hour as u64, 1, 1_000_000)?;
        if self.login_delay_after > self.login_lock_after {
            return Err(ConfigError::LoginThresholds {
                delay_after: self.login_delay_after,
                lock_after: self.login_lock_after,
            });
        }
        if !(0.001..=100_000.0).contains(&self.send_per_second) {
            return Err(ConfigError::SendRate(self.send_per_second));
        }
        check_range("min-free-mb", self.min_free_mb, 0, 1 << 20)?;
        check_range("backup-every", self.backup_every.as_secs(), 1, 365 * 24 * 3600)?;
        check_range("backup-keep", self.backup_keep as u64, 1, 10_000)?;
        if let Some(token) = &self.metrics_token {
            let visible = token.bytes().all(|byte| byte.is_ascii_graphic());
            if !(16..=256).contains(&token.len()) || !visible {
                return Err(ConfigError::MetricsToken);
            }
        }
        let tiers: Vec<String> = self.tiers.iter().map(|tier| tier.trim().to_string()).collect();
        if !valid_tiers(&tiers) {
            return Err(ConfigError::Tiers(self.tiers.join(",")));
        }

        let public_origin = match &self.public_origin {
            None => None,
            Some(origin) => Some(normalize_origin(origin)?),
        };
        let secure_cookie = public_origin
            .as_deref()
            .is_some_and(|origin| origin.starts_with("https://"));

        Ok(Config {
            data_dir: self.data_dir.clone(),
            public_origin,
            secure_cookie,
            max_message_chars: self.max_message_chars,
            max_frame_bytes: self.max_frame_bytes,
            send_queue: self.send_queue,
            send_queue_bytes: self.send_queue_mb << 20,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            history_cache: self.history_cache,
            cache_bytes: self.cache_mb * 1024 * 1024,
            registration: self.registration,
            session_ttl: Duration::from_secs(self.session_days * 24 * 3600),
            drain: Duration::from_millis(self.drain_ms),
            tiers,
            send_burst: self.send_burst,
            send_per_second: self.send_per_second,
            metrics_token: self.metrics_token.clone(),
            min_free_bytes: self.min_free_mb * 1024 * 1024,
            backup: self.backup_dir.as_ref().map(|dir| BackupSchedule {
                dir: dir.clone(),
                every: self.backup_every,
                keep: self.backup_keep,
            }),
            presence_grace: Duration::from_millis(self.presence_grace_ms),
            max_connections_per_user: self.max_connections_per_user,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_api_concurrency: self.max_api_concurrency,
            max_long_polls: self.max_long_polls,
            max_password_hashes: self.max_password_hashes,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(self.keep_alive_timeout_ms),
            max_fragments: self.max_fragments,
            fragment_timeout: Duration::from_millis(self.fragment_timeout_ms),
            login_delay_after: self.login_delay_after,
            login_lock_after: self.login_lock_after,
            login_lock: Duration::from_secs(self.login_lock_minutes * 60),
            registrations_per_hour: self.registrations_per_hour,
            trusted_proxies: self.trusted_proxy.clone(),
        })
    }
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, resolving a host name to
/// its first address.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let invalid = |reason: String| format!("invalid listen address {text:?}: {reason}; expected IP:PORT or HOST:PORT, such as 127.0.0.1:8080");
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(invalid("missing or invalid port".into()));
    };
    if port.parse::<u16>().is_err() {
        return Err(invalid("missing or invalid port".into()));
    }
    // The system resolver reads "0" or "2130706433" as IPv4 addresses, so a
    // typo such as 0:8080 would listen on every interface.
    if !host.bytes().any(|byte| byte.is_ascii_alphabetic()) {
        return Err(invalid("the host is neither an IP address nor a name".into()));
    }
    let mut addresses = std::net::ToSocketAddrs::to_socket_addrs(text).map_err(|error| invalid(error.to_string()))?;
    addresses.next().ok_or_else(|| invalid("the host name has no address".into()))
}

/// Parses an interval such as `90s`, `30m`, `6h` or `1d`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not an interval: expected a whole number with s, m, h or d, such as 6h");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

fn check_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::OutOfRange {
        flag,
        value,
        min,
        max,
    })
}

fn valid_tiers(tiers: &[String]) -> bool {
    let valid_name = |name: &String| {
        (1..=32).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let distinct = tiers.iter().collect::<std::collections::HashSet<_>>().len() == tiers.len();
    (1..=32).contains(&tiers.len()) && distinct && tiers.iter().all(valid_name)
}

/// Lowercases an origin and strips one trailing slash, rejecting paths and
/// schemes other than http and https.
fn normalize_origin(origin: &str) -> Result<String, ConfigError> {
    let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => Ok(lower),
        _ => Err(ConfigError::PublicOrigin(origin.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_accepts_defaults() {
        let args = ServeArgs::for_tests("/tmp/x");
        assert!(args.validate().is_ok());
    }

    #[test]
    fn repeated_flag_takes_last_value() {
        let Command::Serve(args) = Cli::parse_from(["aura", "serve", "--send-burst", "5", "--send-burst", "7"]).command else {
            panic!("serve parses");
        };
        assert_eq!(args.send_burst, 7);
    }

    #[test]
    fn validate_names_flag_out_of_range() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.send_queue = 0;
        let message = args.validate().unwrap_err().to_string();
        assert!(message.starts_with("--send-queue is 0"), "{message}");
    }

    #[test]
    fn public_origin_with_path_is_rejected() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.public_origin = Some("https://chat.example.com/app".into());
        assert!(args.validate().is_err());
    }

    #[test]
    fn duplicate_tiers_are_rejected() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.tiers = vec!["free".into(), "free".into()];
        assert!(matches!(args.validate(), Err(ConfigError::Tiers(_))));
    }

    #[test]
    fn unknown_tier_ranks_first() {
        let config = ServeArgs::for_tests("/tmp/x").validate().unwrap();
        assert_eq!(config.tier_rank("elite"), 2);
        assert_eq!(config.tier_rank("platinum"), 0);
    }

    #[test]
    fn parse_listen_accepts_addresses_and_localhost() {
        assert_eq!(parse_listen("127.0.0.1:8080"), Ok("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:9000"), Ok("[::1]:9000".parse().unwrap()));
        let localhost = parse_listen("localhost:8080").expect("localhost resolves");
        assert!(localhost.ip().is_loopback(), "localhost resolves to a loopback address: {localhost}");
        assert_eq!(localhost.port(), 8080);
    }

    #[test]
    fn parse_listen_rejects_missing_port() {
        let error = parse_listen("localhost").unwrap_err();
        assert!(error.contains("missing or invalid port"), "the error names the port: {error}");
        assert!(parse_listen("localhost:http").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
        assert!(parse_listen("0:8080").is_err(), "0 is not taken as 0.0.0.0");
        assert!(parse_listen("2130706433:8080").is_err(), "a number is not taken as an address");
    }

    #[test]
    fn parse_interval_accepts_units() {
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_interval("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn parse_interval_rejects_missing_unit() {
        assert!(parse_interval("6").is_err());
        assert!(parse_interval("h").is_err());
        assert!(parse_interval("1.5h").is_err());
    }

    #[test]
    fn short_metrics_token_is_rejected() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.metrics_token = Some("short".into());
        assert!(matches!(args.validate(), Err(ConfigError::MetricsToken)));
    }

    #[test]
    fn login_delay_after_lock_is_rejected() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.login_delay_after = 12;
        args.login_lock_after = 10;
        assert!(matches!(args.validate(), Err(ConfigError::LoginThresholds { .. })));
    }

    #[test]
    fn trusted_proxy_list_parses() {
        let Command::Serve(args) = Cli::parse_from(["aura", "serve", "--trusted-proxy", "127.0.0.1,::1"]).command else {
            panic!("serve parses");
        };
        let config = args.validate().unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
    }

    #[test]
    fn https_public_origin_sets_secure_cookie() {
        let mut args = ServeArgs::for_tests("/tmp/x");
        args.public_origin = Some("https://Chat.Example.com/".into());
        let config = args.validate().unwrap();
        assert_eq!(config.public_origin.as_deref(), Some("https://chat.example.com"));
        assert!(config.secure_cookie);
    }
}
