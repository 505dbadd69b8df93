//! SQL written once for both databases (issue 9's "store logic written
//! once"): a statement is text in the dialect both SQLite and PostgreSQL
//! speak, with `$1`, `$2` … parameters, and typed arguments; each store
//! executes a script of them in one transaction ([`Store::run_sql`],
//! [`Store::read_sql`]) or inside a transaction it already holds
//! (`logic::Tx::exec`). Everything built on this (webhooks, deliveries,
//! attempts: `store::outbound`) exists once.
//!
//! The common dialect: integers are 64-bit (`INTEGER` on SQLite, `BIGINT`
//! on PostgreSQL), booleans are integers 0/1, JSON is text, bytes are
//! `BLOB`/`BYTEA`. `$N` is rewritten to `?N` for SQLite.
//!
//! [`Store::run_sql`]: super::Store::run_sql
//! [`Store::read_sql`]: super::Store::read_sql

use super::{Result, StoreError};

/// A typed argument; `None` is SQL NULL of that type (PostgreSQL needs the
/// type even for a NULL). Its `Debug` shows the kind only: arguments carry
/// signing secrets and passwords.
#[derive(Clone, PartialEq)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    /// JSON text, serialised once by the caller ([`Arg::json`], or
    /// `Arg::from(&value)` for a `Value`): text on SQLite, `jsonb` on
    /// PostgreSQL.
    Json(Option<String>),
}

impl Arg {
    /// `value` as a JSON argument.
    pub fn json(value: &impl serde::Serialize) -> Result<Self> {
        serde_json::to_string(value)
            .map(|t| Arg::Json(Some(t)))
            .map_err(|e| StoreError::Internal(format!("a JSON argument: {e}")))
    }

    fn kind(&self) -> &'static str {
        match self {
            Arg::Int(_) => "int",
            Arg::Text(_) => "text",
            Arg::Bytes(_) => "bytes",
            Arg::Json(_) => "json",
        }
    }
}

impl std::fmt::Debug for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind())
    }
}

/// A JSON value, serialised here (a `Value` always serialises).
impl From<&serde_json::Value> for Arg {
    fn from(v: &serde_json::Value) -> Self {
        Arg::Json(Some(v.to_string()))
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<Vec<u8>> for Arg {
    fn from(v: Vec<u8>) -> Self {
        Arg::Bytes(Some(v))
    }
}
impl From<Option<Vec<u8>>> for Arg {
    fn from(v: Option<Vec<u8>>) -> Self {
        Arg::Bytes(v)
    }
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

pub type Row = Vec<Val>;

/// One statement of a script. Its `Debug` shows the SQL and the kinds of
/// its arguments, never their values: arguments carry signing secrets and
/// passwords (webhooks, flows), and a statement in an error or log line
/// must not leak them.
#[derive(Clone)]
pub struct Stmt {
    /// Mostly a literal; built text for a list of values (`IN ($1, $2, …)`).
    pub sql: std::borrow::Cow<'static, str>,
    pub args: Vec<Arg>,
    /// When set, a statement that changes and returns no row ends the
    /// script with this error and rolls the transaction back.
    pub or_else: Option<NotFound>,
    /// When set, a unique constraint the statement breaks (a taken name)
    /// ends the script with this conflict instead of a store failure.
    pub on_unique: Option<Taken>,
    /// Rows an in-process cache holds (SQLite's writer caches whether a
    /// workspace has contact-triggered flows, and list fields): that
    /// executor drops the cache in the same job as the write.
    pub changes: Option<Cached>,
}

/// What a [`Stmt::changes`] write invalidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    Flows,
    Lists,
}

/// A unique value already taken: the conflict a statement answers with
/// (see [`Stmt::on_unique`]; `store::plan` names them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub code: crate::domain::ErrorCode,
    pub message: String,
}

impl Taken {
    pub fn error(&self) -> StoreError {
        StoreError::Conflict {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The error a [`Stmt::or_else`] raises.
#[derive(Clone, Debug)]
pub struct NotFound {
    pub kind: &'static str,
    pub id: String,
}

/// What one statement did: its rows (for `RETURNING` or `SELECT`) and how
/// many rows it changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    pub rows: Vec<Row>,
    pub changed: u64,
}

impl Done {
    /// The first row of a read that must find one (its statement fails with
    /// `or_not_found` otherwise, or it reads what the same script just
    /// wrote): none is a store failure naming `what`.
    pub fn row(&self, what: &str) -> Result<&[Val]> {
        self.rows.first().map(Vec::as_slice).ok_or_else(|| {
            StoreError::Internal(format!("{what}: a read that must find a row found none"))
        })
    }
}

impl std::fmt::Debug for Stmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stmt")
            .field("sql", &self.sql)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl Stmt {
    pub fn new(sql: impl Into<std::borrow::Cow<'static, str>>, args: Vec<Arg>) -> Self {
        Self {
            sql: sql.into(),
            args,
            or_else: None,
            on_unique: None,
            changes: None,
        }
    }

    /// Marks the statement as a write to rows a cache holds.
    pub fn changes(mut self, what: Cached) -> Self {
        self.changes = Some(what);
        self
    }

    /// Answers `taken` when the statement breaks a unique constraint; any
    /// other error stays a store failure.
    pub fn on_unique(mut self, taken: Taken) -> Self {
        self.on_unique = Some(taken);
        self
    }

    /// Fails the script (rolled back) when the statement finds no row.
    pub fn or_not_found(mut self, kind: &'static str, id: impl ToString) -> Self {
        self.or_else = Some(NotFound {
            kind,
            id: id.to_string(),
        });
        self
    }

    /// The error when `done` found nothing and the statement asks for one.
    pub fn check(&self, done: &Done) -> Result<()> {
        match &self.or_else {
            Some(nf) if done.rows.is_empty() && done.changed == 0 => {
                Err(StoreError::not_found(nf.kind, &nf.id))
            }
            _ => Ok(()),
        }
    }
}

/// `items` cut into chunks of at most `max` whose sizes are powers of two
/// (64, 16, 4, 1 for 85 at most 64), so that statements built per chunk
/// come in a few texts only, and statement caches keep them.
pub fn pow2_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    // At least one item a chunk, whatever `max` says: never an endless run
    // of empty chunks.
    let max = max.max(1);
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max {
            max
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `$sql`, and `$lock` after it when `$locks`: the row lock a statement
/// takes on a database that locks rows (PostgreSQL; SQLite's one writer
/// holds every row already). Both texts are literals.
#[macro_export]
macro_rules! with_lock {
    ($locks:expr, $sql:expr, $lock:literal) => {
        if $locks { concat!($sql, $lock) } else { $sql }
    };
}

/// The `due_at` a wake-up gives a run (an exit check, an event, a webhook's
/// result), `$now` being the parameter holding the time: now, for a run
/// nobody holds; for a leased run, one millisecond before the least of its
/// `due_at` and now. A claim leaves `due_at` as it was and returns it
/// (`ClaimedRun::claimed_due`), and the completion keeps a run due when
/// `due_at` differs from it: moving a leased run's `due_at` only downwards
/// means no second wake-up can put it back where the claim saw it.
#[macro_export]
macro_rules! woken_due {
    ($now:literal) => {
        concat!(
            "CASE WHEN lease_until > ",
            $now,
            " THEN (CASE WHEN due_at < ",
            $now,
            " THEN due_at ELSE ",
            $now,
            " END) - 1",
            " ELSE ",
            $now,
            " END"
        )
    };
}

/// `p.a, p.b, …`: names joined by `, `, each after the prefix `$p` (a
/// table alias and its dot, or nothing).
#[macro_export]
macro_rules! prefixed {
    ($p:literal; $first:literal $(, $rest:literal)* $(,)?) => {
        concat!($p, $first $(, ", ", $p, $rest)*)
    };
}

/// `$from, $from+1, …` for `n` values: the inside of `IN (…)`.
pub fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQLite form of a statement: `$N` becomes `?N` (outside quotes).
pub fn sqlite_text(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Typed reads of a row's columns; a column of the wrong type or a NULL
/// where a value is required is an error naming the column, never a
/// default.
pub trait RowExt {
    /// A text column, borrowed (for parsing without a copy).
    fn str_at(&self, i: usize) -> Result<&str>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>>;
    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)? != 0)
    }
    /// A JSON text column, parsed.
    fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        serde_json::from_str(self.str_at(i)?).map_err(|e| {
            StoreError::Internal(format!("column {i} holds JSON that does not parse: {e}"))
        })
    }
    /// A JSON text column or NULL, parsed.
    fn opt_json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>>;
}

fn wrong(i: usize, want: &str, got: &Val) -> StoreError {
    StoreError::Internal(format!("column {i}: expected {want}, found {got:?}"))
}

impl RowExt for [Val] {
    fn opt_json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>> {
        match self.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.json(i).map(Some),
        }
    }
    fn str_at(&self, i: usize) -> Result<&str> {
        match self.get(i) {
            Some(Val::Text(v)) => Ok(v),
            Some(v) => Err(wrong(i, "text", v)),
            None => Err(wrong(i, "text", &Val::Null)),
        }
    }
    fn int(&self, i: usize) -> Result<i64> {
        match self.get(i) {
            Some(Val::Int(v)) => Ok(*v),
            Some(v) => Err(wrong(i, "an integer", v)),
            None => Err(wrong(i, "an integer", &Val::Null)),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
    fn text(&self, i: usize) -> Result<String> {
        self.str_at(i).map(str::to_owned)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match self.get(i) {
            Some(Val::Bytes(v)) => Ok(v.clone()),
            Some(Val::Text(v)) => Ok(v.clone().into_bytes()),
            Some(v) => Err(wrong(i, "bytes", v)),
            None => Err(wrong(i, "bytes", &Val::Null)),
        }
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.get(i) {
            Some(Val::Null) => Ok(None),
            _ => self.bytes(i).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_during_a_lease_never_bring_due_at_back_to_the_claimed_value() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE runs (due_at INTEGER, lease_until INTEGER)")
            .unwrap();
        // Claimed when due at 100, leased until 5000.
        c.execute("INSERT INTO runs VALUES (100, 5000)", [])
            .unwrap();
        let wake = format!("UPDATE runs SET due_at = {}", crate::woken_due!("?1"));
        let due = |c: &rusqlite::Connection| -> i64 {
            c.query_row("SELECT due_at FROM runs", [], |r| r.get(0))
                .unwrap()
        };
        let mut last = 100;
        // Several in the claim's millisecond, later, and earlier.
        for now in [100, 100, 100, 150, 99, 4999] {
            c.execute(&wake, [now]).unwrap();
            let d = due(&c);
            assert!(d < last, "{now}: due_at {d} must fall below {last}");
            last = d;
        }
        // A run nobody holds (or whose lease ended) is due now.
        c.execute("UPDATE runs SET due_at = 9000, lease_until = NULL", [])
            .unwrap();
        c.execute(&wake, [300]).unwrap();
        assert_eq!(due(&c), 300);
        c.execute("UPDATE runs SET due_at = 9000, lease_until = 200", [])
            .unwrap();
        c.execute(&wake, [300]).unwrap();
        assert_eq!(due(&c), 300);
    }

    #[test]
    fn an_argument_debug_print_shows_its_kind_only() {
        let shown = format!("{:?}", Arg::from("whsec_c2VjcmV0"));
        assert_eq!(shown, r#""text""#);
        let json = Arg::json(&serde_json::json!({"password": "hunter2"})).unwrap();
        assert_eq!(format!("{json:?}"), r#""json""#);
    }

    #[test]
    fn a_statement_debug_print_shows_no_argument_value() {
        let stmt = Stmt::new(
            "UPDATE webhooks SET secret = $2 WHERE id = $1",
            vec!["wh_1".into(), "whsec_c2VjcmV0".into(), 7.into()],
        );
        let shown = format!("{stmt:?}");
        assert!(shown.contains("UPDATE webhooks"), "{shown}");
        assert!(
            !shown.contains("whsec_") && !shown.contains("wh_1"),
            "{shown}"
        );
        assert!(shown.contains(r#"["text", "text", "int"]"#), "{shown}");
    }

    #[test]
    fn chunks_are_powers_of_two_up_to_the_most_and_keep_every_item_in_order() {
        let sizes = |n: usize, max: usize| {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = pow2_chunks(&items, max).collect();
            assert_eq!(chunks.concat(), items, "every item once, in order");
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0, 64), Vec::<usize>::new());
        assert_eq!(sizes(1, 64), [1]);
        assert_eq!(sizes(85, 64), [64, 16, 4, 1]);
        assert_eq!(sizes(200, 64), [64, 64, 64, 8]);
        assert_eq!(sizes(7, 4), [4, 2, 1]);
        assert_eq!(sizes(3, 0), [1, 1, 1], "a zero most still makes progress");
    }

    #[test]
    fn dollar_parameters_become_sqlite_ones_outside_quotes() {
        assert_eq!(
            sqlite_text("SELECT $1, '$2', $10 WHERE a = $3"),
            "SELECT ?1, '$2', ?10 WHERE a = ?3"
        );
        assert_eq!(sqlite_text("SELECT '$' || $1"), "SELECT '$' || ?1");
    }

    #[test]
    fn reads_fail_loudly_on_the_wrong_type() {
        let row = [Val::Int(3), Val::Null, Val::Text("x".into())];
        assert_eq!(row.int(0).unwrap(), 3);
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert!(row.int(1).is_err());
        assert!(row.int(2).is_err());
        assert!(row.text(9).is_err());
        assert_eq!(row.opt_text(2).unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn a_required_row_that_is_missing_is_not_found() {
        let s = Stmt::new("UPDATE t SET a = 1", vec![]).or_not_found("webhook", "wh_1");
        assert!(matches!(
            s.check(&Done::default()),
            Err(StoreError::NotFound {
                kind: "webhook",
                ..
            })
        ));
        assert!(
            s.check(&Done {
                rows: vec![],
                changed: 1
            })
            .is_ok()
        );
    }
}
