//! Typed, layered configuration: built-in defaults < config file (TOML) <
//! `HOOKFLOW_*` environment variables < command-line flags. Validated once at
//! start: every bad key is reported together, then the process exits.
//! Passed by value into the server; never global.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Every setting, with the reason it exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`HOOKFLOW_LISTEN`).
    pub listen: String,
    /// `sqlite://PATH` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// `text` for people, `json` for log pipelines.
    pub log_format: String,
    /// A `tracing` filter such as `info` or `hookflow=debug,info`.
    pub log_level: String,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace_secs: u64,
    /// PostgreSQL pool size, or SQLite read connections.
    pub db_pool_size: u32,
    /// Most writes SQLite commits in one transaction (group commit).
    pub sqlite_max_batch: usize,
    /// Runs the engine claims and advances per transaction.
    pub engine_batch: usize,
    /// A claim stops taking runs once their event data (the inbound bodies
    /// and events that started them) passes this many bytes, so a burst of
    /// large bodies does not sit parsed in memory 512 at a time; the oldest
    /// due run is always taken, whatever its size.
    pub engine_claim_bytes: u64,
    /// How long a claim on due runs lasts: after a crash, another process
    /// (or this one, restarted) takes the runs over once it expires.
    pub engine_lease_secs: u64,
    /// Longest the engine sleeps before looking for due work (work accepted
    /// by this process wakes it at once; other processes' work waits this).
    pub engine_poll_ms: u64,
    /// Engine loops claiming and executing runs at once in this process;
    /// 0 (default) picks by store: 1 on SQLite, 4 on PostgreSQL.
    pub engine_workers: usize,
    /// Inbound calls (`POST /hooks/{token}`) one API key may make per second,
    /// in bursts of as many; 0 (default) is unlimited. Beyond it: 429 with
    /// `Retry-After`. Per process.
    pub inbound_rate_per_key: u32,
    /// Inbound calls one flow's URL accepts per second, whoever calls, in
    /// bursts of as many; 0 (default) is unlimited.
    pub inbound_rate_per_flow: u32,
    /// Calls kept per flow in its inbound-call log (`GET
    /// /v1/flows/{id}/inbound-calls`), newest first; 0 keeps none.
    pub inbound_log_per_flow: usize,
    /// Longest wait, in seconds, for a request's headers: from a connection's
    /// opening, or the end of its previous response (keep-alive idleness),
    /// to the end of the next request's headers. Then it is closed.
    pub http_header_timeout_secs: u64,
    /// Longest wait, in seconds, for a whole body once its headers arrived
    /// (408 beyond it).
    pub http_body_timeout_secs: u64,
    /// Connections served at once; 0 (default) picks from the open-file
    /// limit (raised to its hard limit at start): that limit less 128, for
    /// the database and logs, and less `outbound_max_in_flight` (at most a
    /// quarter of the limit), for the sockets of deliveries in progress.
    pub http_max_connections: usize,
    /// Memory request bodies may take at once, counting their parsed JSON
    /// (16× their length; bulk events 3×); beyond it requests wait, then
    /// get 503.
    pub max_body_memory_bytes: usize,
    /// The bearer token `GET /metrics` requires; empty (default): metrics are
    /// not served. A secret: never logged.
    pub metrics_token: SecretSetting,
    /// The URL other systems reach this server at (`https://hooks.example.com`),
    /// used where hookflow prints full inbound URLs; empty: `http://` + `listen`.
    pub public_url: String,
    /// Address ranges (CIDR, comma-separated) outbound webhooks may reach
    /// although they are loopback, private or link-local (a receiver on
    /// your own network: `10.1.2.0/24`); empty (default): none.
    pub outbound_allow: String,
    /// Until a webhook's receiver answers with its verification key, one
    /// delivery per hour reaches it (the others wait, never dropped).
    pub outbound_verification: bool,
    /// A webhook whose deliveries fail this many hours without a single
    /// success is disabled (its pending deliveries are kept).
    pub outbound_disable_after_hours: u64,
    /// Days delivery attempts (requests and responses) are kept.
    pub outbound_attempt_retention_days: u64,
    /// Deliveries in progress at once in this process. Above the sum of
    /// the busy endpoints' `max_concurrency`: a place is held from the claim
    /// until the attempt's record is on disk, longer than the endpoint's
    /// slot, so a cap equal to that sum would keep endpoints below their
    /// limit (measured: 256 against four endpoints of 64 ran 8-10 % slower).
    pub outbound_max_in_flight: usize,
    /// Deliveries to one webhook in progress at once, across processes.
    pub outbound_per_endpoint: u32,
    /// Longest `Retry-After` a receiver may ask for, in seconds.
    pub outbound_retry_after_cap_secs: u64,
    /// How long a worker holds a delivery it is sending: after a crash,
    /// another process (or this one, restarted) sends it again once this
    /// passes. Longer than the longest webhook timeout (60 s), or a slow
    /// attempt may be sent twice.
    pub outbound_lease_secs: u64,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

/// `10.0.0.0/8, 127.0.0.1/32` → the ranges; a bare address is its /32 or
/// /128.
pub fn parse_cidrs(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{p}` is not an address range such as 10.0.0.0/8"))
        })
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            database_url: "sqlite://hookflow.db".into(),
            max_body_bytes: 1024 * 1024,
            log_format: "text".into(),
            log_level: "info".into(),
            shutdown_grace_secs: 20,
            db_pool_size: 8,
            sqlite_max_batch: 512,
            engine_batch: 512,
            engine_claim_bytes: 1 << 20,
            engine_lease_secs: 30,
            engine_poll_ms: 250,
            engine_workers: 0,
            // Unlimited: a single-tenant server has no basis for guessing a
            // limit, and any guess would throttle a legitimate import; an
            // operator sharing the server between integrations sets one.
            inbound_rate_per_key: 0,
            inbound_rate_per_flow: 0,
            inbound_log_per_flow: 100,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            http_max_connections: 0,
            public_url: String::new(),
            metrics_token: SecretSetting::default(),
            max_body_memory_bytes: 96 * 1024 * 1024,
            outbound_allow: String::new(),
            outbound_verification: true,
            outbound_disable_after_hours: 5 * 24,
            outbound_attempt_retention_days: 30,
            outbound_max_in_flight: 1024,
            outbound_per_endpoint: 8,
            outbound_retry_after_cap_secs: 6 * 3600,
            outbound_lease_secs: 120,
        }
    }
}

/// A setting that is a secret (`metrics_token`): read and written as its
/// text, but `Debug` never shows it, so a logged `Config` leaks nothing.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(String);

impl SecretSetting {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "(unset)"
        } else {
            "(secret)"
        })
    }
}

/// Every problem found in the configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Values given on the command line; they win over every other layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
}

impl Config {
    /// Loads the layers, from `file` if given, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(vec![format!(
                    "config file {} does not exist",
                    path.display()
                )]));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // HOOKFLOW_CONFIG names the file itself; HOOKFLOW_TEST_* belongs to
        // the test suite. Neither is a setting.
        figment = figment
            .merge(Env::prefixed("HOOKFLOW_").filter(|k| {
                k != "config" && !k.as_str().to_ascii_lowercase().starts_with("test_")
            }));
        if let Some(l) = &overrides.listen {
            figment = figment.merge(Serialized::default("listen", l));
        }
        if let Some(d) = &overrides.database_url {
            figment = figment.merge(Serialized::default("database_url", d));
        }
        Self::extract_all(&figment)
    }

    /// Every problem at once: unknown keys, values of the wrong type and
    /// values out of range. A key of the wrong type takes its default for
    /// the range checks of the others, so one bad key never hides another.
    fn extract_all(figment: &Figment) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let raw: BTreeMap<String, figment::value::Value> = figment
            .extract()
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let defaults = serde_json::to_value(Config::default()).expect("config serialises");
        let known = defaults.as_object().expect("config is a map");
        for key in raw.keys() {
            if !known.contains_key(key) {
                errors.push(format!(
                    "unknown setting `{key}` (from {})",
                    source(figment, key)
                ));
            }
        }
        let mut values = serde_json::Map::new();
        for (key, default) in known {
            // A setting's type is its default's: text or a whole number
            // (narrower integer types are checked when the whole is built).
            let got = if default.is_string() {
                figment
                    .extract_inner::<String>(key)
                    .map(serde_json::Value::from)
            } else if default.is_boolean() {
                figment
                    .extract_inner::<bool>(key)
                    .map(serde_json::Value::from)
            } else {
                figment
                    .extract_inner::<u64>(key)
                    .map(serde_json::Value::from)
            };
            // A whole number must also fit its setting's own type (`u32`…):
            // tried alone, on the defaults, so the error names the key.
            let got = got.map_err(|e| e.kind.to_string()).and_then(|v| {
                let mut alone = defaults.clone();
                alone[key] = v.clone();
                serde_json::from_value::<Config>(alone)
                    .map(|_| v)
                    .map_err(|_| "a number too large for this setting".to_owned())
            });
            match got {
                Ok(v) => {
                    values.insert(key.clone(), v);
                }
                Err(why) => {
                    errors.push(format!("`{key}` (from {}): {why}", source(figment, key)));
                    values.insert(key.clone(), default.clone());
                }
            }
        }
        match serde_json::from_value::<Config>(serde_json::Value::Object(values)) {
            Ok(config) => {
                if let Err(ConfigError(more)) = config.validate(figment) {
                    errors.extend(more);
                }
                if errors.is_empty() {
                    return Ok(config);
                }
            }
            // A whole number too large for its setting's type.
            Err(e) => errors.push(format!("a setting is out of range: {e}")),
        }
        Err(ConfigError(errors))
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, why: String| {
            errors.push(format!("`{key}` (from {}): {why}", source(figment, key)))
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "listen",
                format!("`{}` is not an IP:port address", self.listen),
            );
        }
        let db = &self.database_url;
        let sqlite_ok = db.strip_prefix("sqlite://").is_some_and(|p| !p.is_empty());
        if !sqlite_ok && !db.starts_with("postgres://") && !db.starts_with("postgresql://") {
            bad(
                "database_url",
                format!(
                    "`{}` is neither sqlite://PATH nor postgres://…",
                    crate::store::redact_url(db)
                ),
            );
        }
        if self.max_body_bytes < 1024 {
            bad("max_body_bytes", "must be at least 1024".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bad(
                "log_format",
                format!("`{}` is not `text` or `json`", self.log_format),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            bad(
                "log_level",
                format!("`{}` is not a valid log filter", self.log_level),
            );
        }
        if self.db_pool_size == 0 || self.db_pool_size > 256 {
            bad("db_pool_size", "must be between 1 and 256".into());
        }
        if self.sqlite_max_batch == 0 || self.sqlite_max_batch > 10_000 {
            bad("sqlite_max_batch", "must be between 1 and 10000".into());
        }
        if self.engine_batch == 0 || self.engine_batch > 10_000 {
            bad("engine_batch", "must be between 1 and 10000".into());
        }
        if self.engine_claim_bytes < 1024 || self.engine_claim_bytes > 1 << 30 {
            bad(
                "engine_claim_bytes",
                "must be between 1024 and 1073741824 (1 GiB)".into(),
            );
        }
        if self.engine_lease_secs == 0 || self.engine_lease_secs > 3600 {
            bad("engine_lease_secs", "must be between 1 and 3600".into());
        }
        if let Err(e) = parse_cidrs(&self.outbound_allow) {
            bad("outbound_allow", e);
        }
        if self.outbound_lease_secs == 0 || self.outbound_lease_secs > 3600 {
            bad("outbound_lease_secs", "must be between 1 and 3600".into());
        }
        if self.outbound_disable_after_hours == 0 {
            bad("outbound_disable_after_hours", "must be at least 1".into());
        }
        if self.outbound_attempt_retention_days == 0 {
            bad(
                "outbound_attempt_retention_days",
                "must be at least 1".into(),
            );
        }
        if self.outbound_max_in_flight == 0 || self.outbound_max_in_flight > 65_536 {
            bad(
                "outbound_max_in_flight",
                "must be between 1 and 65536".into(),
            );
        }
        if self.outbound_per_endpoint == 0 || self.outbound_per_endpoint > 4096 {
            bad("outbound_per_endpoint", "must be between 1 and 4096".into());
        }
        if self.engine_workers > 64 {
            bad(
                "engine_workers",
                "must be between 0 (automatic) and 64".into(),
            );
        }
        if self.engine_poll_ms < 10 || self.engine_poll_ms > 60_000 {
            bad("engine_poll_ms", "must be between 10 and 60000".into());
        }
        if self.http_header_timeout_secs == 0 || self.http_header_timeout_secs > 3600 {
            bad(
                "http_header_timeout_secs",
                "must be between 1 and 3600".into(),
            );
        }
        if self.http_body_timeout_secs == 0 || self.http_body_timeout_secs > 3600 {
            bad(
                "http_body_timeout_secs",
                "must be between 1 and 3600".into(),
            );
        }
        if self.http_max_connections > 1_000_000 {
            bad(
                "http_max_connections",
                "must be between 0 (automatic) and 1000000".into(),
            );
        }
        let token = self.metrics_token.expose();
        if !token.is_empty()
            && (token.len() < 16 || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        {
            bad(
                "metrics_token",
                "must be at least 16 visible ASCII characters (its value is not shown)".into(),
            );
        }
        if self.max_body_bytes > 1 << 30 {
            bad(
                "max_body_bytes",
                "must be at most 1073741824 (1 GiB)".into(),
            );
        }
        let room = self.max_body_bytes.saturating_mul(16);
        if self.max_body_memory_bytes < room {
            bad(
                "max_body_memory_bytes",
                format!(
                    "must be at least 16 × max_body_bytes ({room}), room for one largest body and its parsed JSON"
                ),
            );
        }
        if self.inbound_log_per_flow > 10_000 {
            bad("inbound_log_per_flow", "must be between 0 and 10000".into());
        }
        let url = &self.public_url;
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if !url.is_empty() && host.is_none_or(str::is_empty) {
            bad(
                "public_url",
                format!(
                    "`{}` is not an http:// or https:// URL with a host",
                    self.public_url
                ),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Where other systems reach this server, without a trailing slash.
    pub fn public_base(&self) -> String {
        if self.public_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_url.trim_end_matches('/').to_owned()
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated at load")
    }

    pub fn engine_config(&self) -> crate::flows::EngineConfig {
        crate::flows::EngineConfig {
            batch: self.engine_batch,
            claim_bytes: self.engine_claim_bytes,
            lease: std::time::Duration::from_secs(self.engine_lease_secs),
            poll: std::time::Duration::from_millis(self.engine_poll_ms),
            workers: self.engine_workers,
        }
    }

    pub fn api_options(&self) -> crate::api::ApiOptions {
        crate::api::ApiOptions {
            max_body_bytes: self.max_body_bytes,
            inbound_rate_per_key: self.inbound_rate_per_key,
            inbound_rate_per_flow: self.inbound_rate_per_flow,
            inbound_log_per_flow: self.inbound_log_per_flow,
            max_body_memory_bytes: self.max_body_memory_bytes,
            body_budget_wait: crate::api::budget::BodyBudget::WAIT,
            metrics_token_hash: (!self.metrics_token.expose().is_empty())
                .then(|| crate::domain::keys::hash_presented(self.metrics_token.expose())),
            header_timeout: std::time::Duration::from_secs(self.http_header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.http_body_timeout_secs),
            max_connections: match self.http_max_connections {
                0 => crate::server::automatic_max_connections(self.outbound_max_in_flight),
                n => n,
            },
            outbound: self.outbound_settings(),
        }
    }

    pub fn outbound_settings(&self) -> crate::outbound::delivery::OutboundSettings {
        use std::time::Duration;
        crate::outbound::delivery::OutboundSettings {
            allow: parse_cidrs(&self.outbound_allow).unwrap_or_default(),
            verification: self.outbound_verification,
            retry_after_cap: Duration::from_secs(self.outbound_retry_after_cap_secs),
            disable_after: Duration::from_secs(self.outbound_disable_after_hours * 3600),
            attempt_retention: Duration::from_secs(self.outbound_attempt_retention_days * 86_400),
            max_in_flight: self.outbound_max_in_flight,
            per_endpoint: self.outbound_per_endpoint,
            lease: Duration::from_secs(self.outbound_lease_secs),
            ..Default::default()
        }
    }

    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_batch: self.sqlite_max_batch,
            pool_size: self.db_pool_size,
            ..Default::default()
        }
    }
}

/// Where a key's value came from: `environment variable HOOKFLOW_LISTEN`,
/// `h.toml`, `command line` or `defaults`.
fn source(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(m) if m.name.contains("environment") => {
            format!("environment variable HOOKFLOW_{}", key.to_ascii_uppercase())
        }
        Some(m) => match &m.source {
            Some(src) => src.to_string(),
            None if m.name.contains("Serialized") => "command line".into(),
            None => m.name.to_string(),
        },
        None => "defaults".into(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
mod tests {
    use super::*;

    #[test]
    fn every_bad_key_is_listed() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                "listen = \"nope\"\nmax_body_bytes = \"big\"\ncolour = 1\n",
            )?;
            jail.set_env("HOOKFLOW_LOG_FORMAT", "xml");
            jail.set_env("HOOKFLOW_TEST_PG", "ignored");
            let err = Config::load(Some(Path::new("h.toml")), &Overrides::default()).unwrap_err();
            // An unknown key, a wrong type and bad values, all in one error.
            assert_eq!(err.0.len(), 4, "{:?}", err.0);
            let text = err.to_string();
            assert!(
                text.contains("unknown setting `colour` (from h.toml)"),
                "{text}"
            );
            assert!(
                text.contains("`max_body_bytes` (from h.toml): invalid type"),
                "{text}"
            );
            assert!(
                text.contains("`listen` (from h.toml): `nope` is not an IP:port address"),
                "{text}"
            );
            assert!(text.contains("`log_format` (from environment variable HOOKFLOW_LOG_FORMAT): `xml` is not `text` or `json`"), "{text}");
            jail.create_file("h.toml", "listen = \"nope\"\n")?;
            let err = Config::load(Some(Path::new("h.toml")), &Overrides::default()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("listen") && text.contains("log_format"),
                "{text}"
            );
            assert!(text.contains("HOOKFLOW_LOG_FORMAT"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn rate_limits_default_to_unlimited_and_must_be_whole_numbers() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!((c.inbound_rate_per_key, c.inbound_rate_per_flow), (0, 0));
            jail.set_env("HOOKFLOW_INBOUND_RATE_PER_KEY", "50");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.api_options().inbound_rate_per_key, 50);
            jail.set_env("HOOKFLOW_INBOUND_RATE_PER_FLOW", "-1");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().contains("HOOKFLOW_INBOUND_RATE_PER_FLOW"),
                "{err}"
            );
            // Too large for its type (u32): named, and the others still listed.
            jail.set_env("HOOKFLOW_INBOUND_RATE_PER_KEY", "5000000000");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().contains("`inbound_rate_per_key` (from environment variable HOOKFLOW_INBOUND_RATE_PER_KEY): a number too large for this setting"),
                "{err}"
            );
            assert_eq!(err.0.len(), 2, "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_logged_config_shows_no_secret() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOOKFLOW_METRICS_TOKEN", "scrape-me-0123456789");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.metrics_token.expose(), "scrape-me-0123456789");
            let shown = format!("{c:?} {:?}", c.api_options());
            assert!(!shown.contains("scrape-me"), "{shown}");
            assert!(shown.contains("metrics_token: (secret)"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                "listen = \"127.0.0.1:1\"\nlog_level = \"debug\"\n",
            )?;
            jail.set_env("HOOKFLOW_LISTEN", "127.0.0.1:2");
            let c = Config::load(Some(Path::new("h.toml")), &Overrides::default()).unwrap();
            assert_eq!(
                (c.listen.as_str(), c.log_level.as_str()),
                ("127.0.0.1:2", "debug")
            );
            let o = Overrides {
                listen: Some("127.0.0.1:3".into()),
                database_url: None,
            };
            let c = Config::load(Some(Path::new("h.toml")), &o).unwrap();
            assert_eq!(c.listen, "127.0.0.1:3");
            Ok(())
        });
    }
}
