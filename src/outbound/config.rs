//! A webhook's configuration (WH-1): what a user sends (`WebhookSpec`, the
//! wire shape of `/v1/webhooks` and of an inline `send_webhook` step), and
//! what the delivery engine uses (`WebhookConfig`), checked once. Every
//! problem is reported at once, each naming its field, so a form can show
//! them all. Secrets (a Basic password, a bearer token) never leave through
//! `masked`.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::guard::TargetPolicy;

/// Retries when the spec names none (WH-4's default schedule has eight).
pub const DEFAULT_RETRIES: u8 = 8;
pub const MAX_RETRIES: u8 = 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight to one webhook at once, across every process.
pub const DEFAULT_CONCURRENCY: u16 = 8;
pub const MAX_CONCURRENCY: u16 = 256;
/// Highest rate limit a webhook may set, requests per second.
pub const MAX_RATE: u32 = 1_000_000;
const MAX_NAME: usize = 100;
const MAX_HEADERS: usize = 50;
const MAX_HEADER_VALUE: usize = 4096;

/// Headers a user may not set: hop-by-hop and framing headers (the client
/// owns them), the signature's (they would let a template forge or break
/// it), and those with a field of their own.
const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-authenticate", "a hop-by-hop header"),
    ("proxy-authorization", "a hop-by-hop header"),
    ("proxy-connection", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("host", "set from the URL"),
    ("content-length", "set from the body"),
    ("content-type", "set by `content_type`"),
    ("authorization", "set by `auth`"),
    ("webhook-id", "a signature header"),
    ("webhook-timestamp", "a signature header"),
    ("webhook-signature", "a signature header"),
];

/// A webhook as a user writes it; absent fields take their defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Header name → value, in the order given: a JSON object, or an
    /// array of `[name, value]` pairs.
    #[serde(default, deserialize_with = "name_value_pairs")]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub retries: Option<u8>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<u16>,
    /// Requests per second to this webhook, across every process.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// A response that is not JSON is a failure (WH-9).
    #[serde(default)]
    pub strict_json: bool,
    /// Follow redirects (each hop checked as the URL is); off by default.
    #[serde(default)]
    pub follow_redirects: bool,
    /// The body template (minijinja); absent: SendPulse's default body.
    #[serde(default)]
    pub template: Option<String>,
}

/// Headers as a JSON object or as `[name, value]` pairs.
fn name_value_pairs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Object(serde_json::Map<String, serde_json::Value>),
        Pairs(Vec<(String, String)>),
    }
    match Form::deserialize(d)? {
        Form::Pairs(p) => Ok(p),
        Form::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Err(serde::de::Error::custom(format!(
                    "header `{k}` must be a string, not {other}"
                ))),
            })
            .collect(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    None,
    Basic { user: String, password: String },
    Bearer { token: String },
}

/// A checked webhook configuration.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub name: String,
    pub url: reqwest::Url,
    pub method: Method,
    pub content_type: HeaderValue,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub auth: AuthSpec,
    pub retries: u8,
    pub timeout: Duration,
    pub max_concurrency: u16,
    pub rate_per_second: Option<u32>,
    pub strict_json: bool,
    pub follow_redirects: bool,
    /// The body template; None renders the default body.
    pub template: Option<super::template::BodyTemplate>,
}

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The JSON path at fault (`headers[2]`, `auth.token`).
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a webhook name: Latin letters and digits only, as the seed's
/// vendor requires (no spaces, no accents), 1 to 100 of them.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a webhook name is required".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("a webhook name has at most {MAX_NAME} characters"));
    }
    match name.chars().find(|c| !c.is_ascii_alphanumeric()) {
        Some(c) => Err(format!(
            "a webhook name holds only Latin letters and digits; {c:?} is neither"
        )),
        None => Ok(()),
    }
}

/// Checks one custom header: a valid name that is not reserved, and a value
/// without control characters (CR and LF would split the request).
pub fn check_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if let Some((_, why)) = RESERVED_HEADERS
        .iter()
        .find(|(reserved, _)| *reserved == parsed.as_str())
    {
        return Err(format!("`{parsed}` cannot be set here: it is {why}"));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "the value of `{parsed}` is longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "the value of `{parsed}` holds a control character (CR, LF, NUL …)"
        ));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of `{parsed}` is not a valid header value"))?;
    Ok((parsed, value))
}

fn check_secret(field: &str, value: &str, problems: &mut Vec<Problem>) {
    if value.is_empty() {
        problems.push(problem(field, "must not be empty"));
    } else if value.chars().any(char::is_control) {
        problems.push(problem(field, "must not hold control characters"));
    }
}

impl WebhookSpec {
    /// The checked configuration, or every problem found.
    pub fn check(&self, policy: &TargetPolicy) -> Result<WebhookConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        if let Err(e) = check_name(&self.name) {
            problems.push(problem("name", e));
        }
        let url = policy
            .check_url(&self.url)
            .map_err(|e| problems.push(problem("url", e.to_string())))
            .ok();
        let method = match self
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("POST") => Some(Method::POST),
            Some("PUT") => Some(Method::PUT),
            Some("PATCH") => Some(Method::PATCH),
            Some("GET") => Some(Method::GET),
            Some("DELETE") => Some(Method::DELETE),
            Some(other) => {
                problems.push(problem(
                    "method",
                    format!("{other:?} is not one of POST, PUT, PATCH, GET, DELETE"),
                ));
                None
            }
        };
        let content_type = self.content_type.as_deref().unwrap_or("application/json");
        let content_type = match HeaderValue::from_str(content_type) {
            Ok(v) if !content_type.trim().is_empty() => Some(v),
            _ => {
                problems.push(problem(
                    "content_type",
                    "must be a media type such as application/json",
                ));
                None
            }
        };
        if self.headers.len() > MAX_HEADERS {
            problems.push(problem("headers", format!("at most {MAX_HEADERS} headers")));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, (name, value)) in self.headers.iter().enumerate() {
            match check_header(name, value) {
                Ok(h) if headers.iter().any(|(n, _)| *n == h.0) => problems.push(problem(
                    format!("headers[{i}]"),
                    format!("`{}` is given twice", h.0),
                )),
                Ok(h) => headers.push(h),
                Err(e) => problems.push(problem(format!("headers[{i}]"), e)),
            }
        }
        let auth = self.auth.clone().unwrap_or(AuthSpec::None);
        match &auth {
            AuthSpec::None => {}
            AuthSpec::Basic { user, password } => {
                if user.contains(':') {
                    problems.push(problem("auth.user", "must not contain `:`"));
                }
                check_secret("auth.user", user, &mut problems);
                check_secret("auth.password", password, &mut problems);
            }
            AuthSpec::Bearer { token } => check_secret("auth.token", token, &mut problems),
        }
        let retries = self.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            problems.push(problem(
                "retries",
                format!("must be between 0 and {MAX_RETRIES}"),
            ));
        }
        let timeout = self
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            problems.push(problem(
                "timeout_ms",
                format!("must be between 1 and {}", MAX_TIMEOUT.as_millis()),
            ));
        }
        let max_concurrency = self.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if max_concurrency == 0 || max_concurrency > MAX_CONCURRENCY {
            problems.push(problem(
                "max_concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        if self.rate_per_second == Some(0) {
            problems.push(problem(
                "rate_per_second",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.rate_per_second.is_some_and(|r| r > MAX_RATE) {
            problems.push(problem(
                "rate_per_second",
                format!("must be at most {MAX_RATE} (leave it out for no limit)"),
            ));
        }
        let template = match self
            .template
            .as_deref()
            .map(super::template::BodyTemplate::compile)
        {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                problems.push(problem("template", e.to_string()));
                None
            }
        };
        match (url, method, content_type) {
            (Some(url), Some(method), Some(content_type)) if problems.is_empty() => {
                Ok(WebhookConfig {
                    name: self.name.clone(),
                    url,
                    method,
                    content_type,
                    headers,
                    auth,
                    retries,
                    timeout,
                    max_concurrency,
                    rate_per_second: self.rate_per_second,
                    strict_json: self.strict_json,
                    follow_redirects: self.follow_redirects,
                    template,
                })
            }
            _ => Err(problems),
        }
    }
}

impl WebhookConfig {
    /// The configuration as the API shows it: secrets masked.
    pub fn masked(&self) -> serde_json::Value {
        let auth = match &self.auth {
            AuthSpec::None => serde_json::json!({"type": "none"}),
            AuthSpec::Basic { user, .. } => {
                serde_json::json!({"type": "basic", "user": user, "password": MASK})
            }
            AuthSpec::Bearer { .. } => serde_json::json!({"type": "bearer", "token": MASK}),
        };
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let shown = if secret_header(n.as_str()) {
                    MASK
                } else {
                    v.to_str().unwrap_or("")
                };
                (n.to_string(), shown.to_owned())
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "url": self.url.as_str(),
            "method": self.method.as_str(),
            "content_type": self.content_type.to_str().unwrap_or(""),
            "headers": headers,
            "auth": auth,
            "retries": self.retries,
            "timeout_ms": self.timeout.as_millis() as u64,
            "max_concurrency": self.max_concurrency,
            "rate_per_second": self.rate_per_second,
            "strict_json": self.strict_json,
            "follow_redirects": self.follow_redirects,
            "template": self.template.as_ref().map(|t| t.source()),
        })
    }
}

/// What a masked secret reads as.
pub const MASK: &str = "********";

/// A header list as given: a JSON object or `[name, value]` pairs.
fn header_pairs(headers: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    match headers {
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        serde_json::Value::Array(pairs) => pairs
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

/// `spec` as it may be shown: `auth`'s secrets and secret-named headers'
/// values replaced by [`MASK`].
pub fn mask(spec: &serde_json::Value) -> serde_json::Value {
    let mut out = spec.clone();
    match out.get_mut("headers") {
        Some(serde_json::Value::Object(m)) => {
            for (name, value) in m.iter_mut() {
                if secret_header(name) {
                    *value = MASK.into();
                }
            }
        }
        Some(serde_json::Value::Array(pairs)) => {
            for pair in pairs.iter_mut() {
                let secret = pair
                    .get(0)
                    .and_then(|n| n.as_str())
                    .is_some_and(secret_header);
                if let (true, Some(value)) = (secret, pair.get_mut(1)) {
                    *value = MASK.into();
                }
            }
        }
        _ => {}
    }
    if let Some(auth) = out.get_mut("auth").and_then(|a| a.as_object_mut()) {
        for key in ["password", "token"] {
            if let Some(v) = auth.get_mut(key) {
                *v = MASK.into();
            }
        }
    }
    out
}

/// The first place `spec` still holds [`MASK`] where a secret belongs
/// (`auth.password`, `headers.X-Api-Key`): a masked value with nothing
/// stored to keep.
pub fn masked_field(spec: &serde_json::Value) -> Option<String> {
    for key in ["user", "password", "token"] {
        if spec["auth"][key] == MASK {
            return Some(format!("auth.{key}"));
        }
    }
    header_pairs(&spec["headers"])
        .into_iter()
        .find(|(_, v)| v == MASK)
        .map(|(n, _)| format!("headers.{n}"))
}

/// Puts the stored values back where `spec` (a configuration as the API
/// showed it, sent back) holds [`MASK`]: a client that saves what it read
/// keeps its secrets, and never stores the mask itself.
pub fn unmask(spec: &mut serde_json::Value, stored: &serde_json::Value) {
    let stored_headers = header_pairs(&stored["headers"]);
    let stored_header = |name: &str| {
        stored_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    match spec.get_mut("headers") {
        Some(serde_json::Value::Object(m)) => {
            for (name, value) in m.iter_mut() {
                if value == MASK
                    && let Some(v) = stored_header(name)
                {
                    *value = v;
                }
            }
        }
        Some(serde_json::Value::Array(pairs)) => {
            for pair in pairs.iter_mut() {
                let name = pair.get(0).and_then(|n| n.as_str()).map(str::to_owned);
                if let (Some(name), Some(value)) = (name, pair.get_mut(1))
                    && value == MASK
                    && let Some(v) = stored_header(&name)
                {
                    *value = v;
                }
            }
        }
        _ => {}
    }
    let same_kind = spec["auth"]["type"] == stored["auth"]["type"];
    if let Some(auth) = spec.get_mut("auth").and_then(|a| a.as_object_mut())
        && same_kind
    {
        for key in ["password", "token", "user"] {
            if auth.get(key).and_then(|v| v.as_str()) == Some(MASK)
                && let Some(v) = stored["auth"].get(key)
            {
                auth.insert(key.to_owned(), v.clone());
            }
        }
    }
}

/// Whether a custom header's value is a secret by its name (`X-Api-Key`,
/// `X-Auth-Token`, `Cookie`…): such values are masked wherever a header is
/// shown (the webhook, each attempt's request), like `auth`'s.
pub fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "auth",
        "password",
        "passwd",
        "cookie",
        "session",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_spec_sent_back_gets_its_secrets_again() {
        let stored = serde_json::json!({
            "url": "https://crm.example.com/h",
            "auth": {"type": "basic", "user": "crm", "password": "pw-1"},
            "headers": {"X-Api-Key": "k-1", "X-Team": "growth"}
        });
        let shown = mask(&stored);
        assert_eq!(shown["auth"]["password"], MASK);
        assert_eq!(shown["auth"]["user"], "crm");
        assert_eq!(shown["headers"]["X-Api-Key"], MASK);
        assert_eq!(shown["headers"]["X-Team"], "growth");
        assert_eq!(masked_field(&shown).as_deref(), Some("auth.password"));
        let mut back = shown.clone();
        unmask(&mut back, &stored);
        assert_eq!(back, stored);
        assert_eq!(masked_field(&back), None);

        // Pairs in, object stored (and header names in any case).
        let mut pairs = serde_json::json!({"headers": [["x-api-key", MASK]]});
        unmask(&mut pairs, &stored);
        assert_eq!(pairs["headers"][0][1], "k-1");

        // A mask under another kind of auth takes nothing from the old one.
        let mut bearer = serde_json::json!({"auth": {"type": "bearer", "token": MASK}});
        unmask(&mut bearer, &stored);
        assert_eq!(bearer["auth"]["token"], MASK);
        assert_eq!(masked_field(&bearer).as_deref(), Some("auth.token"));
        let mut unknown = serde_json::json!({"headers": {"X-New-Key": MASK}});
        unmask(&mut unknown, &stored);
        assert_eq!(masked_field(&unknown).as_deref(), Some("headers.X-New-Key"));
    }

    #[test]
    fn headers_named_like_secrets_are_masked_in_views() {
        for name in [
            "X-Api-Key",
            "x-auth-token",
            "X-Client-Secret",
            "Cookie",
            "X-Session-Id",
        ] {
            assert!(secret_header(name), "{name}");
        }
        for name in [
            "X-Source",
            "Accept",
            "X-Request-Origin",
            "webhook-signature",
        ] {
            assert!(!secret_header(name), "{name}");
        }
        let spec = WebhookSpec {
            name: "Masked".into(),
            url: "https://example.com/in".into(),
            headers: vec![
                ("X-Api-Key".into(), "k-1".into()),
                ("X-Source".into(), "hookflow".into()),
            ],
            ..Default::default()
        };
        let shown = spec.check(&TargetPolicy::default()).unwrap().masked();
        assert_eq!(
            shown["headers"],
            serde_json::json!([["x-api-key", MASK], ["x-source", "hookflow"]])
        );
    }

    fn loopback() -> TargetPolicy {
        TargetPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
        }
    }

    fn spec() -> WebhookSpec {
        WebhookSpec {
            name: "OrderHook1".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        }
    }

    fn problems(s: &WebhookSpec) -> Vec<String> {
        s.check(&loopback())
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = spec().check(&loopback()).unwrap();
        assert_eq!(c.method, Method::POST);
        assert_eq!(c.content_type, "application/json");
        assert_eq!(c.auth, AuthSpec::None);
        assert_eq!(c.retries, 8);
        assert_eq!(c.timeout, Duration::from_secs(15));
        assert_eq!(c.max_concurrency, 8);
        assert!(!c.strict_json && !c.follow_redirects);
    }

    #[test]
    fn names_are_latin_letters_and_digits() {
        for ok in ["a", "Hook2", "ABCxyz0189"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "my hook",
            "crème",
            "hook-1",
            "hook_1",
            "ßig",
            "名前",
            &"a".repeat(101),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let s = WebhookSpec {
            name: "bad name".into(),
            url: "ftp://example.com/".into(),
            method: Some("TRACE".into()),
            headers: vec![("X-Ok".into(), "1".into()), ("Bad Name".into(), "v".into())],
            retries: Some(21),
            timeout_ms: Some(60_001),
            max_concurrency: Some(0),
            rate_per_second: Some(0),
            auth: Some(AuthSpec::Bearer { token: "".into() }),
            ..Default::default()
        };
        assert_eq!(
            problems(&s),
            [
                "name",
                "url",
                "method",
                "headers[1]",
                "auth.token",
                "retries",
                "timeout_ms",
                "max_concurrency",
                "rate_per_second"
            ]
        );
    }

    #[test]
    fn an_unsafe_literal_target_is_refused_at_save() {
        for url in [
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:192.168.0.1]/",
            "http://2130706433/",
        ] {
            let s = WebhookSpec {
                url: url.into(),
                ..spec()
            };
            let p = s.check(&TargetPolicy::default()).unwrap_err();
            assert_eq!(p[0].field, "url", "{url}");
        }
    }

    #[test]
    fn reserved_and_broken_headers_are_refused() {
        for name in [
            "Connection",
            "transfer-encoding",
            "Host",
            "content-type",
            "Authorization",
            "Webhook-Signature",
            "webhook-id",
        ] {
            let e = check_header(name, "x").unwrap_err();
            assert!(e.contains("cannot be set"), "{name}: {e}");
        }
        for value in ["a\r\nX-Injected: 1", "a\nb", "a\0b", "\u{7f}"] {
            let e = check_header("X-Custom", value).unwrap_err();
            assert!(e.contains("control character"), "{value:?}: {e}");
        }
        assert!(check_header("X Custom", "v").is_err());
        assert!(check_header("X-Custom", "tab\tok").is_ok());
        let s = WebhookSpec {
            headers: vec![("X-A".into(), "1".into()), ("x-a".into(), "2".into())],
            ..spec()
        };
        assert_eq!(problems(&s), ["headers[1]"]);
    }

    #[test]
    fn secrets_are_masked() {
        let s = WebhookSpec {
            auth: Some(AuthSpec::Basic {
                user: "shop".into(),
                password: "hunter2-secret".into(),
            }),
            ..spec()
        };
        let shown = s.check(&loopback()).unwrap().masked().to_string();
        assert!(shown.contains("\"user\":\"shop\""), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let s = WebhookSpec {
            auth: Some(AuthSpec::Bearer {
                token: "tok-very-secret".into(),
            }),
            ..spec()
        };
        let shown = s.check(&loopback()).unwrap().masked().to_string();
        assert!(
            !shown.contains("very-secret") && shown.contains(MASK),
            "{shown}"
        );
    }

    #[test]
    fn the_wire_shape_refuses_unknown_fields() {
        let bad: Result<WebhookSpec, _> = serde_json::from_value(
            serde_json::json!({"name": "a", "url": "http://x/", "retry": 3}),
        );
        assert!(bad.is_err());
        let ok: WebhookSpec = serde_json::from_value(serde_json::json!({
            "name": "a", "url": "http://x/", "auth": {"type": "basic", "user": "u", "password": "p"}
        }))
        .unwrap();
        assert!(matches!(ok.auth, Some(AuthSpec::Basic { .. })));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a user types, checking a header never panics, and
            /// what it accepts can never split the request or override a
            /// header the client or the signature owns.
            #[test]
            fn accepted_headers_are_safe(name in "\\PC{0,12}|[A-Za-z-]{1,20}", value in "\\PC{0,40}|[ -~\r\n\0]{0,40}") {
                if let Ok((n, v)) = check_header(&name, &value) {
                    let bytes = v.as_bytes();
                    prop_assert!(!bytes.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0));
                    prop_assert!(RESERVED_HEADERS.iter().all(|(r, _)| *r != n.as_str()));
                }
            }

            #[test]
            fn names_accepted_are_ascii_alphanumeric(name in "\\PC{0,30}") {
                if check_name(&name).is_ok() {
                    prop_assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()));
                }
            }
        }
    }
}
