//! Outbound HTTP to URLs that users configure (webhooks, and later anything
//! else that calls out on a user's behalf).
//!
//! - [`guard`]: target safety (WH-7). Which addresses a request may reach
//!   ([`refusal`], [`TargetPolicy`]), the save-time URL check
//!   ([`TargetPolicy::check_url`]), and the one [`client`] builder whose
//!   resolver, redirect policy and proxy setting keep that promise at connect
//!   time.
//!
//! Must not: build a `reqwest::Client` for a user's URL anywhere else, or send
//! a request without [`TargetPolicy::check_target`] (reqwest does not ask the
//! resolver about literal IP hosts).

pub mod guard;

pub use guard::{
    GuardedResolver, Refused, SystemResolver, TargetPolicy, UnsafeRange, UrlProblem, client,
    redirect_policy, refusal, refusal_in,
};
