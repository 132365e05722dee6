//! The servers under test, each a child process on loopback: the Aura
//! release binary on a fresh data directory, and the Node.js baseline.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use aura::ids::{now_ms, COUNTER_BITS, LEASE_SPAN};
use aura::store::{Category, Channel, Layout, PostPolicy, Store};
use serde_json::{json, Value};

use crate::cpu::CpuSample;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Password of every benchmark account.
const PASSWORD: &str = "benchmark password";

/// The server that a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Aura,
    Baseline,
}

impl Kind {
    /// Returns the name used in tables and JSON records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Aura => "aura",
            Kind::Baseline => "node-ws",
        }
    }

    /// Parses `aura` or `node` (also `node-ws` and `baseline`).
    pub fn parse(name: &str) -> anyhow::Result<Kind> {
        match name {
            "aura" => Ok(Kind::Aura),
            "node" | "node-ws" | "baseline" => Ok(Kind::Baseline),
            other => bail!("unknown target {other:?}: expected aura or node"),
        }
    }
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The Aura binary.
    pub aura_bin: PathBuf,
    /// Extra flags for `aura serve`.
    pub aura_args: Vec<String>,
    /// The Node.js executable.
    pub node: String,
    /// benches/baseline, holding server.js and its node_modules.
    pub baseline_dir: PathBuf,
    /// Directory of the data directories and the server logs.
    pub work_dir: PathBuf,
    /// Member accounts to create on Aura. Connections use them in turn.
    pub users: usize,
    /// Channels to create for the load, besides the default ones.
    pub channels: usize,
}

/// A running server.
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Ids of the channels that carry the load, as JSON strings.
    pub channels: Vec<String>,
    /// Session tokens of the member accounts, empty for the baseline.
    pub tokens: Vec<String>,
    /// The server's log file (its stderr).
    pub log: PathBuf,
    child: Child,
    data_dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts a server of `kind`, labelled `label` in its log file name.
    pub async fn start(kind: Kind, launch: &Launch, label: &str) -> anyhow::Result<Target> {
        std::fs::create_dir_all(&launch.work_dir)
            .with_context(|| format!("failed to create {}", launch.work_dir.display()))?;
        let log = launch.work_dir.join(format!("{label}-{}.log", kind.name()));
        let target = match kind {
            Kind::Aura => start_aura(launch, log).await?,
            Kind::Baseline => start_baseline(launch, log).await?,
        };
        println!(
            "  {} listening on {} (pid {}, log {})",
            kind.name(),
            target.addr,
            target.pid(),
            target.log.display()
        );
        Ok(target)
    }

    /// Returns the token for the `index`-th connection, or `None` for the baseline.
    pub fn token(&self, index: usize) -> Option<&str> {
        if self.tokens.is_empty() {
            None
        } else {
            Some(&self.tokens[index % self.tokens.len()])
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the data directory of an Aura target.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(|dir| dir.path())
    }

    /// Resident memory of the server process in KiB (VmRSS).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_field_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory of the server process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_field_kib(self.pid(), "VmHWM:")
    }

    /// Samples the CPU time used so far by the server, this process and the machine.
    pub fn cpu(&self) -> CpuSample {
        CpuSample::take(self.pid())
    }

    /// Stops the server with SIGTERM, or kills it when it does not exit in time.
    pub async fn stop(mut self) {
        // SAFETY: kill has no memory effects, and the pid is our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "warning: {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it",
            self.kind.name()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn start_aura(launch: &Launch, log: PathBuf) -> anyhow::Result<Target> {
    let data_dir = tempfile::Builder::new()
        .prefix("aura-data-")
        .tempdir_in(&launch.work_dir)
        .context("failed to create a data directory")?;
    let channels = seed_layout(data_dir.path(), launch.channels).await?;

    let mut command = Command::new(&launch.aura_bin);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        // The load comes from a few users on loopback addresses, far above
        // the per-user and per-address limits that protect a public server;
        // the baseline has no such limits either.
        .args(LOAD_LIMIT_ARGS)
        .args(&launch.aura_args);
    let (child, addr) =
        spawn_and_wait(command, &log).with_context(|| format!("failed to start {}", launch.aura_bin.display()))?;
    let mut target = Target {
        kind: Kind::Aura,
        addr,
        channels: channels.iter().map(|id| id.to_string()).collect(),
        tokens: Vec::new(),
        log,
        child,
        data_dir: Some(data_dir),
    };
    target.tokens = create_accounts(&target, launch.users).await?;
    Ok(target)
}

async fn start_baseline(launch: &Launch, log: PathBuf) -> anyhow::Result<Target> {
    let script = launch.baseline_dir.join("server.js");
    if !launch.baseline_dir.join("node_modules").join("ws").is_dir() {
        bail!(
            "the baseline's packages are missing: run `npm ci --prefix {}` first",
            launch.baseline_dir.display()
        );
    }
    let mut command = Command::new(&launch.node);
    command.arg(&script).arg("--listen").arg("127.0.0.1:0");
    let (child, addr) = spawn_and_wait(command, &log)
        .with_context(|| format!("failed to start {} {}", launch.node, script.display()))?;
    // The baseline accepts any channel id. These look like Aura's, so that
    // frames have the same size on both servers.
    let first = now_ms() << COUNTER_BITS;
    let channels = (0..launch.channels as u64)
        .map(|index| (first + index).to_string())
        .collect();
    Ok(Target {
        kind: Kind::Baseline,
        addr,
        channels,
        tokens: Vec::new(),
        log,
        child,
        data_dir: None,
    })
}

/// Flags that lift Aura's abuse limits for the load; flags in
/// `--aura-arg` come later and override them.
const LOAD_LIMIT_ARGS: &[&str] = &[
    "--send-burst",
    "1000000",
    "--send-per-second",
    "100000",
    "--max-connections-per-user",
    "100000",
    "--max-connections",
    "1000000",
    "--max-connections-per-ip",
    "1000000",
    "--registrations-per-hour",
    "1000000",
    "--login-delay-after",
    "100000",
    "--login-lock-after",
    "100000",
];

/// Writes a layout with the default channels plus `count` channels for the
/// load into a new data directory, and returns the ids of the load channels.
/// The layout is written with Aura's own store before the server opens the
/// directory, which is quicker than creating each channel through the admin API.
async fn seed_layout(dir: &Path, count: usize) -> anyhow::Result<Vec<u64>> {
    let store = Store::open(dir, 16 << 20).context("failed to open the new data directory")?;
    let mut last = now_ms() << COUNTER_BITS;
    let mut next_id = || {
        last += 1;
        last
    };
    let channel = |id: u64, name: String, topic: &str, post| Channel {
        id,
        name,
        topic: topic.to_string(),
        post,
        min_tier: "free".to_string(),
        hidden: false,
    };

    let community = Category {
        id: next_id(),
        name: "Community".to_string(),
        channels: vec![
            channel(next_id(), "general".into(), "Talk about anything", PostPolicy::Everyone),
            channel(
                next_id(),
                "announcements".into(),
                "News from the admins",
                PostPolicy::Admins,
            ),
        ],
    };
    let load = Category {
        id: next_id(),
        name: "Benchmark".to_string(),
        channels: (0..count)
            .map(|index| {
                channel(
                    next_id(),
                    format!("load-{index}"),
                    "Load generator traffic",
                    PostPolicy::Everyone,
                )
            })
            .collect(),
    };
    let ids = load.channels.iter().map(|channel| channel.id).collect();

    let layout = Layout {
        version: 1,
        categories: vec![community, load],
    };
    store.put_layout(&layout).await?;
    // The server continues its ids after the stored lease, so none collides
    // with the channel ids above.
    store.persist_lease(last + LEASE_SPAN).await?;
    drop(store);
    Ok(ids)
}

/// Spawns `command` with stderr going to `log`, and waits until the log
/// shows "listening on ADDR".
fn spawn_and_wait(mut command: Command, log: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let file = File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // The kernel kills the server when the thread that spawned it
            // exits, so a killed load generator leaves no server behind.
            // Servers are spawned from the main thread, which runs the
            // scenarios and lives until the process exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited with {status} before listening; see {}",
                log.display()
            );
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = listening_addr(&text) {
            return Ok((child, addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "the server did not log \"listening on\" within {START_TIMEOUT:?}; see {}",
        log.display()
    )
}

fn listening_addr(log: &str) -> Option<SocketAddr> {
    let start = log.find("listening on ")? + "listening on ".len();
    let rest = &log[start..];
    let end = rest.find(char::is_whitespace)?;
    rest[..end].parse().ok()
}

/// Registers the admin with the setup code and `users` members, logs each
/// member in and returns their session tokens.
async fn create_accounts(target: &Target, users: usize) -> anyhow::Result<Vec<String>> {
    let dir = target.data_dir().expect("an Aura target has a data directory");
    let setup_code = std::fs::read_to_string(dir.join("setup-code")).context("failed to read the setup code")?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", target.addr);
    register(&http, &base, "load-admin", Some(setup_code.trim())).await?;

    let mut tokens = Vec::with_capacity(users);
    for index in 0..users.max(1) {
        let name = format!("load-user-{index}");
        register(&http, &base, &name, None).await?;
        let response = http
            .post(format!("{base}/api/session"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("login of {name} returned {status} without a token: {body}"))?;
        tokens.push(token.to_string());
    }
    Ok(tokens)
}

async fn register(http: &reqwest::Client, base: &str, name: &str, setup_code: Option<&str>) -> anyhow::Result<()> {
    let mut body = json!({"username": name, "password": PASSWORD});
    if let Some(code) = setup_code {
        body["setup_code"] = json!(code);
    }
    let response = http.post(format!("{base}/api/register")).json(&body).send().await?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!("registering {name} returned {status}: {text}");
    }
    Ok(())
}

/// Reads a `kB` field of /proc/PID/status, such as VmRSS.
fn status_field_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {field} line"))?;
    let value = line[field.len()..].trim().trim_end_matches("kB").trim();
    Ok(value.parse()?)
}
