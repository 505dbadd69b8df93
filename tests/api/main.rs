//! The integration suite: one binary, so the crate links once.
//!
//! Every test that is about the API or the store runs on both stores: the
//! `both_stores!` macro makes a `sqlite` and a `postgres` test of one async
//! function. PostgreSQL tests use `HOOKFLOW_TEST_PG` (a connection URL), each
//! in a fresh schema; without it they are skipped, except under CI (`CI` set),
//! where a missing PostgreSQL is a failure.

mod helpers;

mod bad_input;
mod binary;
mod cli;
mod connections;
mod contract;
mod engine;
mod first_run;
mod flows;
mod hardening;
mod inbound;
mod isolation;
mod openapi;
mod queue;
mod readme;
mod webhooks;
