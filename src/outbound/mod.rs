//! Outbound HTTP to URLs that users configure (webhooks, and later anything
//! else that calls out on a user's behalf).
//!
//! - [`guard`]: target safety (WH-7). Which addresses a request may reach
//!   ([`refusal`], [`TargetPolicy`]), the save-time URL check
//!   ([`TargetPolicy::check_url`]), and the one [`client`] builder whose
//!   resolver, redirect policy and proxy setting keep that promise at connect
//!   time.
//! - [`config`]: a webhook's configuration (WH-1), checked once: the name
//!   rule, the URL through the guard, method, content type, custom headers
//!   (no CR/LF, no hop-by-hop, framing or signature headers), auth, retries,
//!   timeout, per-endpoint concurrency and rate; secrets masked in views.
//! - [`schedule`]: what an attempt's answer means, the retry schedule with
//!   jitter, the one-per-hour rule before verification, auto-disable: pure
//!   functions of settings, history and time.
//! - [`send`]: one attempt: the request signed (Standard Webhooks) and sent
//!   through the guard's client, the answer read up to a cap, the whole
//!   exchange recorded with secrets masked.
//! - [`template`]: webhook bodies (WH-1, WH-2). [`BodyTemplate`] checks a
//!   template at save time (syntax, unknown filters and tests, with the line)
//!   and renders it under [`Limits`]; [`default_body`] is SendPulse's shape.
//!
//! Must not: build a `reqwest::Client` for a user's URL anywhere else, or send
//! a request without [`TargetPolicy::check_target`] (reqwest does not ask the
//! resolver about literal IP hosts).

pub mod config;
pub mod delivery;
pub mod guard;
pub mod schedule;
pub mod send;
pub mod template;

pub use guard::{
    GuardedResolver, Refused, SystemResolver, TargetPolicy, UnsafeRange, UrlProblem, client,
    redirect_policy, refusal, refusal_in,
};
pub use template::{
    BodyTemplate, ContactVars, FlowVars, IdVars, Limits, RenderContext, RenderError, TemplateError,
    default_body,
};
