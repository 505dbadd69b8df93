//! One attempt of a delivery: the HTTP request, signed (Standard Webhooks),
//! sent through the guard's client, and what came back, recorded for the
//! activity log (WH-11) with secrets masked and the response body capped
//! (WH-6: a receiver that streams megabytes costs us the cap, no more).
//!
//! Must not: be called inside a database transaction; record a secret.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, USER_AGENT};

use super::config::{AuthSpec, MASK, WebhookConfig};
use super::guard::{TargetPolicy, refusal_in};
use super::schedule::{Failure, Verdict, failure_verdict, verdict};
use crate::domain::Millis;
use crate::domain::signature::SigningSecret;

/// Response bytes kept per attempt; the rest is not read.
pub const RESPONSE_CAP: usize = 64 * 1024;

/// A message to send: its stable id (`webhook-id` on every attempt), the
/// body, and the secrets that sign it (two while a rotated one still
/// signs).
pub struct Outgoing<'a> {
    pub config: &'a WebhookConfig,
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub secrets: &'a [SigningSecret],
    /// Unix seconds for `webhook-timestamp`.
    pub timestamp: i64,
}

/// The request as sent, secrets masked; serialised, the shape the activity
/// shows (`headers` as `[name, value]` pairs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SentRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The response as received, its body cut at [`RESPONSE_CAP`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body went on past the cap (the rest was not read).
    pub truncated: bool,
}

/// One attempt, for the activity log and the retry decision.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub request: SentRequest,
    pub response: Option<Received>,
    /// What the attempt means for its delivery.
    pub verdict: Verdict,
    /// The error in words when there was no answer (or strict mode refused it).
    pub error: Option<String>,
    pub duration: Duration,
}

/// The signature headers of a message (every secret's signature, space
/// separated, as Standard Webhooks allows during a rotation).
pub fn signature_headers(out: &Outgoing<'_>) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = out
        .secrets
        .iter()
        .map(|s| s.sign(out.message_id, out.timestamp, out.body))
        .collect();
    [
        ("webhook-id", out.message_id.to_owned()),
        ("webhook-timestamp", out.timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

/// Sends one attempt and reads its answer (up to the cap); never fails:
/// every outcome is an [`Attempt`]. `now` is for `Retry-After` dates,
/// `retry_after_cap` bounds what a receiver may ask.
pub async fn send(
    client: &reqwest::Client,
    policy: &TargetPolicy,
    out: &Outgoing<'_>,
    now: Millis,
    retry_after_cap: Duration,
) -> Attempt {
    let config = out.config;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, config.content_type.clone());
    headers.insert(
        USER_AGENT,
        reqwest::header::HeaderValue::from_static(concat!("hookflow/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &config.headers {
        headers.insert(name.clone(), value.clone());
    }
    // A message id that is not a valid header value would go out unsigned:
    // refuse to send rather than drop the signature.
    let mut unsignable = None;
    for (name, value) in signature_headers(out) {
        match value.parse() {
            Ok(value) => {
                headers.insert(name, value);
            }
            Err(_) => unsignable = Some(format!("`{name}` would not be a valid header: {value:?}")),
        }
    }
    let mut request = SentRequest {
        method: config.method.to_string(),
        url: config.url.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                let shown = if super::config::secret_header(n.as_str()) {
                    MASK.to_owned()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (n.to_string(), shown)
            })
            .collect(),
        body: String::from_utf8_lossy(out.body).into_owned(),
    };
    let mut builder = client
        .request(config.method.clone(), config.url.clone())
        .headers(headers)
        .timeout(config.timeout)
        .body(out.body.to_vec());
    match &config.auth {
        AuthSpec::None => {}
        AuthSpec::Basic { user, password } => {
            builder = builder.basic_auth(user, Some(password));
            request
                .headers
                .push((AUTHORIZATION.to_string(), format!("Basic {MASK}")));
        }
        AuthSpec::Bearer { token } => {
            builder = builder.bearer_auth(token);
            request
                .headers
                .push((AUTHORIZATION.to_string(), format!("Bearer {MASK}")));
        }
    }
    let started = Instant::now();
    let failed = |failure: Failure, error: String, request: SentRequest| Attempt {
        request,
        response: None,
        verdict: failure_verdict(failure),
        error: Some(error),
        duration: started.elapsed(),
    };
    if let Some(error) = unsignable {
        return failed(Failure::Unsendable, error, request);
    }
    // reqwest does not resolve literal IP hosts, so the guard's resolver
    // never sees them: check the URL itself before every send.
    if let Err(e) = policy.check_target(&config.url) {
        return failed(Failure::UnsafeTarget, e.to_string(), request);
    }
    let mut response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            let (failure, error) = classify(&e);
            return failed(failure, error, request);
        }
    };
    let status = response.status().as_u16();
    let received_headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    let mut truncated = false;
    let mut error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_CAP - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                // The status arrived; a body cut short does not change it.
                error = Some(format!("reading the response: {}", classify(&e).1));
                break;
            }
        }
    }
    // Dropping the response closes the connection if the body was not read
    // to its end: the rest is never downloaded.
    drop(response);
    let mut verdict = verdict(status, retry_after.as_deref(), now, retry_after_cap);
    if config.strict_json
        && verdict == Verdict::Delivered
        && serde_json::from_slice::<serde_json::Value>(&body).is_err()
    {
        let reason = "invalid response format: strict mode wants a JSON answer".to_owned();
        error = Some(reason.clone());
        verdict = Verdict::Retry {
            reason,
            after: None,
        };
    }
    Attempt {
        request,
        response: Some(Received {
            status,
            headers: received_headers,
            body,
            truncated,
        }),
        verdict,
        error,
        duration: started.elapsed(),
    }
}

/// What kind of failure a reqwest error is, and its words (the chain of
/// sources, which names the real cause: refused address, reset, timeout).
fn classify(e: &reqwest::Error) -> (Failure, String) {
    let mut words = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        words.push_str(": ");
        words.push_str(&s.to_string());
        source = s.source();
    }
    let failure = if refusal_in(e).is_some() {
        Failure::UnsafeTarget
    } else if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connect
    };
    (failure, words)
}
