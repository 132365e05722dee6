//! Aura: a self-hosted real-time community chat server.
//!
//! One binary serves the web client, a WebSocket protocol and an HTTP API
//! with the same semantics, and keeps all state in an embedded sled
//! database in one data directory.
//!
//! Module map (docs/architecture.md has the full picture):
//! - [`config`]: command-line flags and their validation.
//! - [`server`]: start-up, the accept loop and the shutdown sequence.
//! - [`shutdown`]: the signal future and the shutdown broadcast.
//! - [`http`]: HTTP routing, the API handlers and the WebSocket upgrade.
//! - [`session`]: one WebSocket connection, its reader and writer.
//! - [`ws_frames`]: the WebSocket frame codec after the handshake, its
//!   rules and the reassembly of fragments.
//! - [`hub`]: channels, subscriptions, fan-out and the message write path.
//! - [`presence`]: who is online, pushed as coalesced deltas, and the
//!   per-user connection cap.
//! - [`store`]: the sled trees, record encoding and the group-commit writer.
//! - [`accounts`]: the user directory, roles, tiers and user changes.
//! - [`layout`]: structure changes: categories, channels, moves.
//! - [`auth`]: accounts, passwords, sessions, the setup code, Origin checks.
//! - [`limits`]: connection and concurrency limits, client addresses.
//! - [`throttle`]: failed-login throttling and the registration rate limit.
//! - [`ids`]: the id sequencer and the JSON form of ids.
//! - [`protocol`]: the JSON frames shared by WebSocket and HTTP.
//! - [`error`]: the error type returned to clients.
//! - [`admin`]: the admin socket and the user operations it serves.
//! - [`cli`]: the `aura user` command.
//! - [`backup`]: consistent copies of the database, by command or on a schedule.
//! - [`verify`]: the `aura verify` check of records and indexes.
//! - [`metrics`]: the Prometheus metrics at GET /metrics.
//! - [`assets`]: the embedded web client.

pub mod accounts;
pub mod admin;
pub mod assets;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod ids;
pub mod layout;
pub mod metrics;
pub mod presence;
pub mod limits;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod verify;
pub mod throttle;
pub mod ws_frames;
