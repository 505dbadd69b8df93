//! hookflow: a self-hosted marketing-automation engine built around webhooks.
//!
//! # Layout
//! - [`domain`]: newtypes and pure rules (emails, phones, ids, fields). No I/O.
//! - [`store`]: the only module with SQL. A [`store::Store`] contract with an
//!   SQLite (embedded, group commit) and a PostgreSQL implementation.
//! - [`api`]: axum only. Router, one file per resource, the one error shape,
//!   extractors for JSON bodies and API keys, the OpenAPI document.
//! - [`flows`]: saving flow documents (shared by API and CLI); the engine to come.
//! - [`outbound`]: HTTP to user-configured URLs: the target guard (WH-7) and the
//!   one client builder that enforces it.
//! - [`config`]: typed, layered configuration (defaults < file < env).
//! - [`server`]: wires config, store and router; runs until shutdown.
//! - [`telemetry`]: tracing and Prometheus metrics set-up.
//! - [`worker`]: the claim → work → finish loop every leased worker runs
//!   (the flow engine, and jobs of the leased queue through `JobWorker`).
//!
//! `src/main.rs` is the CLI and the only place that uses `anyhow`.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod flows;
pub mod outbound;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod worker;
