//! Start-up, the accept loop and the shutdown sequence.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

use crate::accounts::Accounts;
use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::ids::{now_ms, Sequencer, COUNTER_BITS, LEASE_SPAN};
use crate::metrics::{Metrics, Snapshot};
use crate::presence::Presence;
use crate::limits::{Activity, Limits, RefusalSlot, REFUSAL_READ_TIMEOUT};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::writer::{self, Writer};
use crate::store::{Category, Channel, Layout, PostPolicy, Store, NONCE_RETENTION_MS};
use crate::throttle::Throttle;

/// Interval between sweeps of expired sessions and idempotency records.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// State shared by every connection and request.
pub struct App {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<Store>,
    /// Channels, subscriptions and the message write path.
    pub hub: Arc<Hub>,
    /// Every account, with roles and tiers.
    pub accounts: Arc<Accounts>,
    /// Online users and their connection counts.
    pub presence: Arc<Presence>,
    /// Accounts and sessions.
    pub auth: Auth,
    /// Random id of this server start, sent in `ready`; a client that sees
    /// a new epoch reloads its recent history.
    pub epoch: String,
    /// Resolves when shutdown begins.
    pub shutdown: Shutdown,
    /// Counters and histograms served at GET /metrics.
    pub metrics: Arc<Metrics>,
    /// Connection and concurrency limits.
    pub limits: Arc<Limits>,
    /// Failed-login counts and registration rate limits.
    pub throttle: Throttle,
    /// Next WebSocket connection id.
    next_conn: AtomicU64,
    /// Open HTTP connections and WebSockets, which shutdown waits for.
    active: Arc<ActiveTasks>,
}

/// A count of tasks that shutdown drains.
#[derive(Default)]
struct ActiveTasks {
    count: AtomicUsize,
    idle: Notify,
}

/// Decrements the active count when dropped.
pub struct TaskGuard(Arc<ActiveTasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl App {
    /// Issues the next connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reads the values that metrics report as of now.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let (websocket_connections, subscriptions) = self.hub.connection_stats();
        let free = fs2::available_space(&self.config.data_dir).ok();
        Snapshot {
            websocket_connections: websocket_connections as i64,
            subscriptions: subscriptions as i64,
            write_queue: self.hub.write_queue_depth() as i64,
            database_bytes: self.store.size_on_disk().map_or(-1, |bytes| bytes as i64),
            disk_free_bytes: free.map_or(-1, |bytes| bytes as i64),
            writes_available: self.store.is_healthy(),
        }
    }

    /// Counts a task as active until the guard drops.
    pub fn track_task(&self) -> TaskGuard {
        self.active.count.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self.active.clone())
    }

    /// Waits until no task is active or `deadline` passes; returns how many remain.
    async fn drain(&self, deadline: Duration) -> usize {
        let _ = tokio::time::timeout(deadline, async {
            loop {
                let idle = self.active.idle.notified();
                if self.active.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
        self.active.count.load(Ordering::Acquire)
    }
}

/// An opened server, ready to run on a listener.
pub struct Server {
    app: Arc<App>,
    writer: Writer,
    trigger: ShutdownTrigger,
    sequencer: Arc<Sequencer>,
    admin_socket: tokio::net::UnixListener,
}

impl Server {
    /// Opens the data directory: creates it and the default community when
    /// new, renews the id lease and writes the setup code while no admin exists.
    pub async fn open(config: Config) -> anyhow::Result<Server> {
        create_private_dir(&config.data_dir)?;
        let config = Arc::new(config);
        let store = Arc::new(Store::open(&config.data_dir, config.cache_bytes)?.with_min_free_bytes(config.min_free_bytes));
        warn_if_readable_by_others(&config.data_dir);
        let metrics = Arc::new(Metrics::new());

        let sequencer = Arc::new(resume_sequencer(&store).await?);
        let layout = match store.layout()? {
            Some(layout) => layout,
            None => {
                let layout = default_layout(&config, &sequencer);
                store.put_layout(&layout).await?;
                tracing::info!("created the default community");
                layout
            }
        };
        let accounts = Arc::new(Accounts::load(config.clone(), store.clone())?);
        let auth = Auth::open(config.clone(), store.clone(), sequencer.clone(), accounts.clone())?;

        let hub = Arc::new(Hub::new(
            config.clone(),
            store.clone(),
            sequencer.clone(),
            accounts.clone(),
            layout,
            metrics.clone(),
        ));
        let (writer, handle) = writer::writer(store.clone(), sequencer.clone(), hub.clone(), metrics.clone());
        hub.attach_writer(handle);

        let presence = Arc::new(Presence::new(config.clone(), accounts.clone()));

        let (trigger, shutdown) = shutdown::channel();
        let limits = Arc::new(Limits::new(&config));
        let throttle = Throttle::new(&config);
        let app = Arc::new(App {
            config,
            store,
            hub,
            accounts,
            presence,
            auth,
            epoch: format!("{:016x}", rand::random::<u64>()),
            shutdown,
            metrics,
            limits,
            throttle,
            next_conn: AtomicU64::new(1),
            active: Arc::new(ActiveTasks::default()),
        });
        let admin_socket = crate::admin::bind(&app.config.data_dir).with_context(|| {
            format!("failed to create the admin socket in {}", app.config.data_dir.display())
        })?;
        Ok(Server {
            app,
            writer,
            trigger,
            sequencer,
            admin_socket,
        })
    }

    /// Returns the state that connections share: tests inspect it, and the
    /// fuzz targets serve a connection without the accept loop with [`serve_io`].
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves connections from `listener` until `stop` resolves, then shuts
    /// down: stops accepting, closes every WebSocket with 1001, waits for
    /// open connections up to `--drain-ms`, drains the write queue and flushes.
    pub async fn run(self, listener: TcpListener, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            app,
            writer,
            trigger,
            sequencer,
            admin_socket,
        } = self;
        let admin = tokio::spawn(crate::admin::serve(app.clone(), admin_socket, sequencer));
        let (writer_stop, writer_stopped) = oneshot::channel();
        let writer_task = tokio::spawn(writer.run(writer_stopped));
        let sweeper = tokio::spawn(sweep_periodically(app.clone()));
        let expirer = tokio::spawn(expire_tiers(app.clone()));
        let backups = app
            .config
            .backup
            .clone()
            .map(|schedule| tokio::spawn(crate::backup::back_up_periodically(app.store.clone(), schedule)));
        let presence = tokio::spawn(app.presence.clone().run());

        let address = listener.local_addr()?;
        let (messages, users) = app.store.counts();
        tracing::info!(
            addr = %address,
            version = env!("CARGO_PKG_VERSION"),
            data_dir = %app.config.data_dir.display(),
            messages,
            users,
            "listening on {address}"
        );

        accept_loop(&app, &listener, stop).await;
        drop(listener);

        tracing::info!("shutting down: closing connections");
        trigger.trigger();
        let remaining = app.drain(app.config.drain).await;
        if remaining > 0 {
            tracing::warn!(remaining, "drain deadline passed with connections still open");
        }
        // Each aborted task is awaited, so that no task still keeps the
        // database when run returns and a new server can open it at once.
        if let Some(backups) = backups {
            // A backup in progress holds the write gate; stopping it drops
            // the gate and leaves an incomplete copy that the next run removes.
            backups.abort();
            let _ = backups.await;
        }
        for task in [sweeper, expirer, presence] {
            task.abort();
            let _ = task.await;
        }
        let _ = admin.await;
        let _ = writer_stop.send(());
        writer_task.await.context("writer task panicked")?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Accepts connections until `stop` resolves.
async fn accept_loop(app: &Arc<App>, listener: &TcpListener, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut accept_errors: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning, and log
                    // only every hundredth repeat.
                    if accept_errors % 100 == 0 {
                        tracing::error!(%error, repeats = accept_errors, "accept failed");
                    }
                    accept_errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match app.limits.admit_connection(peer.ip()) {
            Ok(slot) => {
                let app = app.clone();
                tokio::spawn(async move {
                    serve_io(app, stream, peer).await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                // Past the cap on refused connections in progress, the
                // connection is closed without a response.
                if let Some(slot) = app.limits.reserve_refusal() {
                    tokio::spawn(refuse_connection(stream, refusal, slot));
                }
            }
        }
    }
}

/// Serves HTTP on one connection, ending it gracefully at shutdown or once
/// it has been idle for `--keep-alive-timeout-ms`. The accept loop passes
/// TCP streams; the fuzz targets pass in-memory pipes.
pub async fn serve_io<I>(app: Arc<App>, io: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let guard = app.track_task();
    app.metrics.tcp_connections.inc();
    let activity = Activity::new();
    let service = service_fn({
        let app = app.clone();
        let activity = activity.clone();
        move |request| {
            let request_guard = activity.begin();
            let response = crate::http::handle(app.clone(), peer, request);
            async move {
                let response = response.await;
                drop(request_guard);
                response
            }
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_read_timeout)
        .max_header_size(app.config.max_header_bytes)
        // hyper requires a read buffer of at least 8 KiB.
        .max_buf_size(app.config.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut shutdown = app.shutdown.clone();
    let keep_alive = app.config.keep_alive_timeout;
    loop {
        let check_at = activity
            .idle_deadline(keep_alive)
            .unwrap_or_else(|| tokio::time::Instant::now() + keep_alive);
        tokio::select! {
            result = connection.as_mut() => {
                log_connection_end(result, peer);
                break;
            }
            _ = shutdown.wait() => {
                connection.as_mut().graceful_shutdown();
                log_connection_end(connection.await, peer);
                break;
            }
            _ = tokio::time::sleep_until(check_at) => {
                let idle = activity
                    .idle_deadline(keep_alive)
                    .is_some_and(|deadline| deadline <= tokio::time::Instant::now());
                if idle {
                    // hyper closes the connection at once when no request is in progress.
                    connection.as_mut().graceful_shutdown();
                    log_connection_end(connection.await, peer);
                    break;
                }
            }
        }
    }
    app.metrics.tcp_connections.dec();
    drop(guard);
}

/// Responds to every request on a refused connection with `refusal`, then
/// closes it. A client that sends no request head within
/// [`REFUSAL_READ_TIMEOUT`] is closed without a response.
async fn refuse_connection(stream: tokio::net::TcpStream, refusal: crate::error::ApiError, slot: RefusalSlot) {
    let service = service_fn(move |_request| {
        let response = crate::http::refusal_response(&refusal);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSAL_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let _ = connection.await;
    drop(slot);
}

fn log_connection_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "http connection ended with an error");
    }
}

/// Creates the data directory with mode 0700, because it contains password
/// hashes, sessions and messages. An existing directory is kept as it is.
fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("failed to create data directory {} (--data-dir)", path.display()))
}

/// Warns when other users may read the data directory. Called after the
/// database lock is taken, so a second instance prints only its lock error.
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else { return };
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "data directory is readable by other users: run chmod 700 on it"
        );
    }
}

/// Continues the id sequence after the stored lease and persists a new one.
pub(crate) async fn resume_sequencer(store: &Store) -> anyhow::Result<Sequencer> {
    let stored = store.lease()?;
    let start = stored.max(now_ms() << COUNTER_BITS);
    let sequencer = Sequencer::resume(start);
    let lease = start + LEASE_SPAN;
    store.persist_lease(lease).await?;
    sequencer.lease_persisted(lease);
    Ok(sequencer)
}

/// Builds the community of a new data directory: one category with "general" and
/// the admins-only "announcements".
fn default_layout(config: &Config, sequencer: &Sequencer) -> Layout {
    let channel = |name: &str, topic: &str, post| Channel {
        id: sequencer.next(),
        name: name.to_string(),
        topic: topic.to_string(),
        post,
        min_tier: config.first_tier().to_string(),
        hidden: false,
    };
    Layout {
        version: 1,
        categories: vec![Category {
            id: sequencer.next(),
            name: "Community".to_string(),
            channels: vec![
                channel("general", "Talk about anything", PostPolicy::Everyone),
                channel("announcements", "News from the admins", PostPolicy::Admins),
            ],
        }],
    }
}

/// Removes expired sessions and idempotency records every [`SWEEP_INTERVAL`].
async fn sweep_periodically(app: Arc<App>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let now = now_ms();
        match app.store.sweep_sessions(now) {
            Ok(removed) => tracing::debug!(removed, "expired sessions swept"),
            Err(error) => tracing::warn!(%error, "session sweep failed"),
        }
        match app.store.sweep_nonces(now.saturating_sub(NONCE_RETENTION_MS)) {
            Ok(removed) => tracing::debug!(removed, "old idempotency records swept"),
            Err(error) => tracing::warn!(%error, "idempotency sweep failed"),
        }
    }
}

/// Moves users to the first tier the moment their tier expires, and ends
/// their access at once. Sleeps until the next expiry, or until an admin
/// sets a new one.
async fn expire_tiers(app: Arc<App>) {
    loop {
        let (expired, next) = app.accounts.expire_tiers(now_ms()).await;
        for user in expired {
            app.hub.user_changed(&user);
        }
        let changed = app.accounts.expiry_changed.notified();
        match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                let _ = tokio::time::timeout(wait, changed).await;
            }
            None => changed.await,
        }
    }
}
