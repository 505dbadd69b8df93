//! The bytes of an outbound webhook's body (WH-1, WH-2): a user's template
//! rendered in a sandbox, or SendPulse's default shape when there is none.
//!
//! - [`BodyTemplate::compile`] is the save-time check (FL-7): a template that
//!   does not parse, or that names a filter or test hookflow does not have, is
//!   refused with the line and column at fault. minijinja itself only finds an
//!   unknown filter when a render reaches it (a branch not taken passes), so
//!   the check walks the compiled instructions instead (`unstable_machinery`;
//!   the version is pinned to `~2.24` for that reason).
//! - [`BodyTemplate::render`] runs it under [`Limits`]: a fuel budget (steps of
//!   the engine), a cap on the output's size (an error, never a truncated body)
//!   and, as an option, strict undefined values. There is no loader: a template
//!   is self-contained, so `include`, `import` and `extends` fail.
//! - [`default_body`]: the body sent when a webhook has no template.
//!
//! Variables: `contact` (`id`, `email`, `phone`, `status`, `fields`), `event`
//! (the run's event data), `flow` (`id`, `name`), `run` (`id`), `step` (`id`),
//! `now` (RFC 3339, UTC, whole seconds). Filters: minijinja's built-ins (among
//! them `tojson` and `urlencode`), `json` (another name for `tojson`), and
//! `date`; `indent`, `batch`, `slice` and `format` have their size arguments
//! capped. Bodies are not auto-escaped: the template decides the format, and
//! `tojson` is how a value becomes JSON; `none` prints as nothing.
//!
//! Not checked at save time: a filter named in a string (`map('nope')`) and
//! an unknown function (`rnage(3)`); both fail the render with the line.
//!
//! Must not: read files or the network, or read the clock (`now` is given).
//! Known limit: fuel counts steps, not bytes, so a template that doubles a
//! string with `~` or repeats one with `*` can still ask for a lot of memory
//! before its output is checked (and a failed allocation aborts); webhook
//! templates are written by a workspace's admins.

use std::fmt::Write as _;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use minijinja::machinery::{self, CodeGenerator, Instruction, Instructions, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value as JinjaValue;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

/// The name minijinja gives the template in its errors (never shown to users).
const NAME: &str = "body";

/// Templates longer than this are refused at save time: a webhook body is a
/// page of JSON, and a bound keeps the parser's nesting (it recurses on
/// blocks) far from the stack's end.
pub const MAX_SOURCE: usize = 64 * 1024;

/// The format of [`default_body`]'s `execution_date`, and of `date` when no
/// format is given.
const DATE_TIME: &str = "%Y-%m-%d %H:%M:%S";

/// A webhook body template, checked when it was saved and ready to render.
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    /// The environment holding the one compiled template; cloned per render
    /// to apply that render's [`Limits`] (its filters and template are shared).
    env: Environment<'static>,
    source: String,
}

/// Why a template was refused at save time; `line` and `column` count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: {message}", at(*line, *column))]
    Syntax {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error(
        "{}: there is no filter named `{name}`; hookflow has minijinja's built-in filters plus `json`, `date` and `urlencode`",
        at(Some(*line), *column)
    )]
    UnknownFilter {
        name: String,
        line: usize,
        column: Option<usize>,
    },
    #[error(
        "{}: there is no test named `{name}` (after `is`); hookflow has minijinja's built-in tests, such as `defined`, `none` and `number`",
        at(Some(*line), *column)
    )]
    UnknownTest {
        name: String,
        line: usize,
        column: Option<usize>,
    },
    #[error("the template is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// Where in the template, in words.
fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "in the template".to_owned(),
    }
}

/// Why a render produced no body. Each failure is a value; the delivery
/// reports it as a template error and sends nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "the template took more than {fuel} steps to render; simplify its loops or raise the limit"
    )]
    OutOfFuel { fuel: u64 },
    #[error("the rendered body is larger than {max} bytes")]
    OutputTooLarge { max: usize },
    #[error("{}: {message} (strict mode: every value used must exist)", at(*line, None))]
    Undefined {
        line: Option<usize>,
        message: String,
    },
    #[error("{}: {message}", at(*line, None))]
    Failed {
        line: Option<usize>,
        message: String,
    },
}

/// What one render may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Engine steps (minijinja fuel: about one per instruction). Bounds time,
    /// including loops that would never end.
    pub fuel: u64,
    /// Bytes of output; more is [`RenderError::OutputTooLarge`], not a cut body.
    pub max_output: usize,
    /// A missing value is an error instead of an empty string. Off by
    /// default: event data differs from one call to the next, and a missing
    /// nested key (`event.customer.name`) renders empty.
    pub strict: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 100_000,
            max_output: 256 * 1024,
            strict: false,
        }
    }
}

/// Everything a template can read. Free-form data stays JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RenderContext {
    pub contact: ContactVars,
    /// The run's event data (the trigger's unmapped fields, later events'
    /// properties): any JSON.
    pub event: Value,
    pub flow: FlowVars,
    pub run: IdVars,
    pub step: IdVars,
    /// The time of the delivery; RFC 3339 in templates (`2022-01-04T09:02:39Z`).
    #[serde(serialize_with = "rfc3339")]
    pub now: DateTime<Utc>,
}

/// The contact a run is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactVars {
    pub id: String,
    pub email: String,
    /// E.164; absent renders empty (`null` to `tojson`).
    pub phone: Option<String>,
    /// `subscribed`, `unsubscribed`, `bounced` or `complained`.
    pub status: String,
    /// The contact's custom fields, typed values as stored.
    pub fields: Map<String, Value>,
}

/// The flow the run walks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowVars {
    pub id: String,
    pub name: String,
}

/// A run or a step: only its id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdVars {
    pub id: String,
}

fn rfc3339<S: serde::Serializer>(now: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&now.to_rfc3339_opts(SecondsFormat::Secs, true))
}

impl BodyTemplate {
    /// The save-time check: parses `source` and refuses unknown filters and
    /// tests anywhere in it, reached or not.
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        if source.len() > MAX_SOURCE {
            return Err(TemplateError::TooLong {
                len: source.len(),
                max: MAX_SOURCE,
            });
        }
        let mut env = environment();
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| syntax_error(&e, source))?;
        check_names(&env, source)?;
        Ok(Self {
            env,
            source: source.to_owned(),
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the body for `ctx`. Never panics: every failure, including one
    /// inside the engine, is a [`RenderError`].
    pub fn render(&self, ctx: &RenderContext, limits: &Limits) -> Result<String, RenderError> {
        let mut env = self.env.clone();
        env.set_fuel(Some(limits.fuel));
        env.set_undefined_behavior(if limits.strict {
            UndefinedBehavior::Strict
        } else {
            UndefinedBehavior::Chainable
        });
        let mut out = Capped::new(limits.max_output);
        let rendered = catch_unwind(AssertUnwindSafe(|| {
            let template = env.get_template(NAME)?;
            template.render_captured_to(ctx, &mut out).map(drop)
        }));
        match rendered {
            Ok(Ok(())) => Ok(out.into_string()),
            Ok(Err(_)) if out.overflowed => Err(RenderError::OutputTooLarge {
                max: limits.max_output,
            }),
            Ok(Err(e)) => Err(render_error(&e, limits)),
            Err(_) => Err(RenderError::Failed {
                line: None,
                message: "the template engine failed on this template".to_owned(),
            }),
        }
    }
}

/// The one environment every template gets: built-in filters and tests, our
/// filters, no loader, no auto-escaping, trailing newlines kept (the body is
/// exactly what the template says).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    // Errors keep their place (`debug` feature) but not copies of the
    // template and its values.
    env.set_debug(false);
    // `none` prints as nothing (Jinja prints "None"): `"phone": "{{ contact.phone }}"`
    // must not send the word. `tojson` still writes `null`.
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            Ok(())
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env.add_filter("tojson", guarded::tojson);
    env.add_filter("json", guarded::tojson);
    env.add_filter("indent", guarded::indent);
    env.add_filter("batch", guarded::batch);
    env.add_filter("slice", guarded::slice);
    env.add_filter("format", guarded::format);
    env.add_filter("date", date);
    env
}

/// Built-in filters whose size argument minijinja allocates in full before
/// anything else (`x|indent(10**13)` asks for 10 TB at once, and a failed
/// allocation aborts the process): the same filters, with the size capped.
mod guarded {
    use minijinja::value::{Kwargs, Rest, StringInput, Value};
    use minijinja::{Error, ErrorKind, State, filters};

    /// The largest width, indent or count these filters accept.
    pub const MAX_SIZE: usize = 1_000;

    fn cap(filter: &str, size: Option<usize>) -> Result<(), Error> {
        match size {
            Some(size) if size > MAX_SIZE => Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{filter}: {size} is too large (at most {MAX_SIZE})"),
            )),
            _ => Ok(()),
        }
    }

    pub fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
        let asked = match &indent {
            Some(indent) => Some(indent.clone()),
            None => kwargs.peek::<Option<Value>>("indent")?,
        };
        cap("tojson", asked.and_then(|v| v.as_usize()))?;
        filters::tojson(value, indent, kwargs)
    }

    pub fn indent(
        value: StringInput<'_>,
        width: Option<usize>,
        first: Option<bool>,
        blank: Option<bool>,
        kwargs: Kwargs,
    ) -> Result<Value, Error> {
        let asked = match width {
            Some(width) => Some(width),
            None => kwargs.peek::<Option<usize>>("width")?,
        };
        cap("indent", asked)?;
        filters::indent(value, width, first, blank, kwargs)
    }

    pub fn batch(
        state: &State,
        value: Value,
        count: usize,
        fill: Option<Value>,
    ) -> Result<Value, Error> {
        cap("batch", Some(count))?;
        filters::batch(state, value, count, fill)
    }

    pub fn slice(
        state: &State,
        value: Value,
        count: usize,
        fill: Option<Value>,
    ) -> Result<Value, Error> {
        cap("slice", Some(count))?;
        filters::slice(state, value, count, fill)
    }

    /// printf-style `format`, refusing widths and precisions over 3 digits.
    pub fn format(state: &State, format: &Value, args: Rest<Value>) -> Result<Value, Error> {
        if let Some(text) = format.as_str() {
            let longest = text
                .split(|c: char| !c.is_ascii_digit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            if text.contains('%') && longest > 3 {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "format: widths and precisions have at most 3 digits",
                ));
            }
        }
        filters::format(state, format, args)
    }
}

/// A parse error with its place. minijinja gives the line and the byte range
/// of the offending token; the column is counted in characters from it.
fn syntax_error(e: &Error, source: &str) -> TemplateError {
    let column = e.range().and_then(|range| column_of(source, range.start));
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError::Syntax {
        line: e.line(),
        column,
        message,
    }
}

fn column_of(source: &str, offset: usize) -> Option<usize> {
    let before = source.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some(before[line_start..].chars().count() + 1)
}

/// Every filter and test the compiled template names must exist in `env`.
/// The walk is over instructions, so it sees the branches a render would
/// skip. (Blocks are empty without minijinja's `multi_template`; they are
/// walked so that turning it on keeps them checked.)
fn check_names(env: &Environment<'_>, source: &str) -> Result<(), TemplateError> {
    // Parsed again through the machinery (the environment keeps its compiled
    // form private); it parsed once already, so this cannot fail differently.
    // `SyntaxConfig` is a unit struct unless minijinja's `custom_syntax` is on.
    #[allow(clippy::default_constructed_unit_structs)]
    let ast = machinery::parse(
        source,
        NAME,
        SyntaxConfig::default(),
        WhitespaceConfig::default(),
    )
    .map_err(|e| syntax_error(&e, source))?;
    let mut codegen = CodeGenerator::new(NAME, source);
    codegen.compile_stmt(&ast);
    let (main, blocks) = codegen.finish();
    std::iter::once(&main)
        .chain(blocks.values())
        .try_for_each(|instructions| check_instructions(env, instructions))
}

fn check_instructions(env: &Environment<'_>, code: &Instructions<'_>) -> Result<(), TemplateError> {
    for idx in 0..code.len() {
        let Ok(idx) = u32::try_from(idx) else { break };
        let (name, is_filter) = match code.get(idx) {
            Some(Instruction::ApplyFilter(name, ..)) => (*name, true),
            Some(Instruction::PerformTest(name, ..)) => (*name, false),
            _ => continue,
        };
        if exists(env, name, is_filter) {
            continue;
        }
        let span = code.get_span(idx);
        let line = span.map_or_else(
            || code.get_line(idx).unwrap_or(1),
            |s| usize::from(s.start_line),
        );
        // minijinja's columns count from 0.
        let column = span.map(|s| usize::from(s.start_col) + 1);
        let name = name.to_owned();
        return Err(if is_filter {
            TemplateError::UnknownFilter { name, line, column }
        } else {
            TemplateError::UnknownTest { name, line, column }
        });
    }
    Ok(())
}

/// Whether `env` has a filter (or test) of that name, asked through the
/// built-in `filter` and `test` tests (the environment's tables are private).
fn exists(env: &Environment<'_>, name: &str, is_filter: bool) -> bool {
    // The VM ignores whitespace inside a name (`x | to json`), so do we.
    let name: String = name.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let expr = if is_filter {
        "n is filter"
    } else {
        "n is test"
    };
    env.compile_expression(expr)
        .and_then(|e| e.eval(minijinja::context! { n => name }))
        .is_ok_and(|v| v.is_true())
}

fn render_error(e: &Error, limits: &Limits) -> RenderError {
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.kind() {
        ErrorKind::OutOfFuel => RenderError::OutOfFuel { fuel: limits.fuel },
        ErrorKind::UndefinedError => RenderError::Undefined {
            line: e.line(),
            message,
        },
        _ => RenderError::Failed {
            line: e.line(),
            message,
        },
    }
}

/// An output buffer that refuses to grow past `max` bytes; the engine stops
/// at the first refused write.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    overflowed: bool,
}

impl Capped {
    fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            overflowed: false,
        }
    }

    fn into_string(self) -> String {
        // The engine writes whole `str`s, so this is always valid UTF-8.
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > self.max {
            self.overflowed = true;
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `value|date(format)`: an RFC 3339 string (formatted in its own offset) or
/// epoch seconds (a number or a string of digits, in UTC), formatted with a
/// chrono strftime `format` (default `%Y-%m-%d %H:%M:%S`). An undefined value
/// renders empty, like any missing value outside strict mode.
fn date(value: &JinjaValue, format: Option<&str>) -> Result<String, Error> {
    if value.is_undefined() {
        return Ok(String::new());
    }
    let when = instant(value).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("date: expected an RFC 3339 date-time or epoch seconds, got `{value}`"),
        )
    })?;
    let format = format.unwrap_or(DATE_TIME);
    let mut out = String::new();
    // chrono reports a bad specifier as a formatting error (its `to_string`
    // would panic on it).
    write!(out, "{}", when.format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("date: `{format}` is not a valid strftime format"),
        )
    })?;
    Ok(out)
}

fn instant(value: &JinjaValue) -> Option<DateTime<FixedOffset>> {
    let utc = |dt: DateTime<Utc>| dt.fixed_offset();
    if let Some(text) = value.as_str() {
        let text = text.trim();
        if let Ok(secs) = text.parse::<i64>() {
            return DateTime::from_timestamp(secs, 0).map(utc);
        }
        return DateTime::parse_from_rfc3339(text).ok();
    }
    if let Some(secs) = value.as_i64() {
        return DateTime::from_timestamp(secs, 0).map(utc);
    }
    let secs = f64::try_from(value.clone()).ok()?;
    if !secs.is_finite() || secs.abs() > 1e15 {
        return None;
    }
    // In range and finite, checked above: the casts cannot saturate.
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9) as u32;
    DateTime::from_timestamp(whole as i64, nanos.min(999_999_999)).map(utc)
}

/// The body of a webhook without a template: SendPulse's shape (seed 002),
/// keys in its order, as compact JSON.
///
/// `automation_id` is the flow's id and `title` the flow's name (the seed's
/// example title, "New Automation", has a space, which a webhook name may not
/// have). `execution_date` is `now` in UTC. `phone` is `""` when the contact
/// has none (the seed's type is a string). `variables` holds one single-key
/// object per contact field (by name), then per top-level key of the event
/// data whose name is not already a field, values as typed.
pub fn default_body(ctx: &RenderContext) -> Vec<u8> {
    #[derive(Serialize)]
    struct Item<'a> {
        automation_id: &'a str,
        title: &'a str,
        execution_date: String,
        email: &'a str,
        phone: &'a str,
        variables: Vec<Map<String, Value>>,
    }

    let fields = &ctx.contact.fields;
    let event_keys = ctx.event.as_object().into_iter().flatten();
    let variables = fields
        .iter()
        .chain(event_keys.filter(|(key, _)| !fields.contains_key(*key)))
        .map(|(key, value)| Map::from_iter([(key.clone(), value.clone())]))
        .collect();
    let body = [Item {
        automation_id: &ctx.flow.id,
        title: &ctx.flow.name,
        execution_date: ctx.now.format(DATE_TIME).to_string(),
        email: &ctx.contact.email,
        phone: ctx.contact.phone.as_deref().unwrap_or(""),
        variables,
    }];
    serde_json::to_vec(&body).expect("strings and JSON values with string keys always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx() -> RenderContext {
        RenderContext {
            contact: ContactVars {
                id: "ct_01J0000000000000000000000".to_owned(),
                email: "example@example.com".to_owned(),
                phone: Some("+380631234567".to_owned()),
                status: "subscribed".to_owned(),
                fields: json!({ "name1": "value1", "age": 42 })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
            event: json!({ "name2": "value2", "order": { "id": 7, "items": ["a", "b"] } }),
            flow: FlowVars {
                id: "123456789".to_owned(),
                name: "New Automation".to_owned(),
            },
            run: IdVars {
                id: "run_1".to_owned(),
            },
            step: IdVars {
                id: "notify_crm".to_owned(),
            },
            now: DateTime::parse_from_rfc3339("2022-01-04T09:02:39Z")
                .expect("a test time")
                .to_utc(),
        }
    }

    fn render(source: &str) -> Result<String, RenderError> {
        render_with(source, &Limits::default())
    }

    fn render_with(source: &str, limits: &Limits) -> Result<String, RenderError> {
        BodyTemplate::compile(source)
            .expect("a valid template")
            .render(&ctx(), limits)
    }

    fn refused(source: &str) -> TemplateError {
        BodyTemplate::compile(source).expect_err("a refused template")
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let error = refused("{\"a\": 1,\n\"b\": {{ contact.email }\n}");
        assert!(
            matches!(
                error,
                TemplateError::Syntax {
                    line: Some(2),
                    column: Some(23),
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "line 2, column 23: syntax error: unexpected `}`, expected end of variable block"
        );
        assert!(matches!(
            refused("{% if x %}"),
            TemplateError::Syntax { line: Some(1), .. }
        ));
    }

    #[test]
    fn an_unknown_filter_is_refused_at_save_time_even_in_a_branch_never_taken() {
        assert_eq!(
            refused("{% if false %}\n  {{ x | jsn }}\n{% endif %}"),
            TemplateError::UnknownFilter {
                name: "jsn".to_owned(),
                line: 2,
                column: Some(10)
            }
        );
        assert!(
            refused("{{ x|bogus }}")
                .to_string()
                .starts_with("line 1, column 6: there is no filter named `bogus`")
        );
        let in_block = refused("{% for i in [] %}{% filter nope %}x{% endfilter %}{% endfor %}");
        assert!(matches!(in_block, TemplateError::UnknownFilter { name, .. } if name == "nope"));
    }

    #[test]
    fn an_unknown_test_is_refused_at_save_time() {
        assert_eq!(
            refused("{{ 1 }}\n{% if event.x is not bogus %}{% endif %}"),
            TemplateError::UnknownTest {
                name: "bogus".to_owned(),
                line: 2,
                column: Some(22)
            }
        );
    }

    #[test]
    fn known_filters_and_tests_compile() {
        for source in [
            "{{ event|tojson }}{{ event|json }}{{ now|date }}{{ 'a b'|urlencode }}",
            "{{ contact.email|upper|lower|default('x') }}{{ x is defined }}{{ 3 is number }}",
            "{% filter upper %}x{% endfilter %}{{ event.order.items|map('upper')|join(',') }}",
        ] {
            assert!(BodyTemplate::compile(source).is_ok(), "{source}");
        }
    }

    #[test]
    fn templates_cannot_reach_other_templates() {
        for source in [
            "{% include 'other' %}",
            "{% import 'other' as o %}",
            "{% extends '/etc/passwd' %}",
        ] {
            assert!(
                matches!(refused(source), TemplateError::Syntax { .. }),
                "{source}"
            );
        }
    }

    #[test]
    fn an_overlong_template_is_refused() {
        let long = "x".repeat(MAX_SOURCE + 1);
        assert_eq!(
            refused(&long),
            TemplateError::TooLong {
                len: MAX_SOURCE + 1,
                max: MAX_SOURCE
            }
        );
        assert!(BodyTemplate::compile(&long[1..]).is_ok());
    }

    #[test]
    fn every_variable_is_there() {
        let cases = [
            ("{{ contact.id }}", "ct_01J0000000000000000000000"),
            ("{{ contact.email }}", "example@example.com"),
            ("{{ contact.phone }}", "+380631234567"),
            ("{{ contact.status }}", "subscribed"),
            (
                "{{ contact.fields.name1 }}/{{ contact.fields.age + 1 }}",
                "value1/43",
            ),
            ("{{ event.order.id }} {{ event.order.items[1] }}", "7 b"),
            ("{{ flow.id }} {{ flow.name }}", "123456789 New Automation"),
            ("{{ run.id }} {{ step.id }}", "run_1 notify_crm"),
            ("{{ now }}", "2022-01-04T09:02:39Z"),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source).as_deref(), Ok(expected), "{source}");
        }
    }

    #[test]
    fn a_missing_phone_renders_empty_and_null_in_json() {
        let mut ctx = ctx();
        ctx.contact.phone = None;
        let template = BodyTemplate::compile("[{{ contact.phone }}]{{ contact.phone|tojson }}")
            .expect("valid");
        assert_eq!(
            template.render(&ctx, &Limits::default()).as_deref(),
            Ok("[]null")
        );
    }

    #[test]
    fn tojson_and_json_write_the_value_as_json() {
        for filter in ["tojson", "json"] {
            let out = render(&format!("{{{{ event|{filter} }}}}")).expect("rendered");
            let back: Value = serde_json::from_str(&out).expect("JSON");
            assert_eq!(back, ctx().event, "{filter}");
        }
        assert_eq!(
            render("{{ contact.email|json }}").as_deref(),
            Ok("\"example@example.com\"")
        );
        assert_eq!(
            render("{{ event.order|tojson(indent=2) }}").as_deref(),
            Ok("{\n  \"id\": 7,\n  \"items\": [\n    \"a\",\n    \"b\"\n  ]\n}")
        );
    }

    #[test]
    fn date_formats_rfc3339_strings_and_epoch_seconds() {
        let cases = [
            ("{{ now|date }}", "2022-01-04 09:02:39"),
            ("{{ now|date('%d.%m.%Y') }}", "04.01.2022"),
            (
                "{{ '2024-02-29T23:30:00+02:00'|date('%Y-%m-%d %H:%M %z') }}",
                "2024-02-29 23:30 +0200",
            ),
            ("{{ 1496827422|date }}", "2017-06-07 09:23:42"),
            ("{{ '1496827872'|date('%H:%M') }}", "09:31"),
            ("{{ 1496827422.5|date('%S.%3f') }}", "42.500"),
            ("{{ event.missing|date }}", ""),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source).as_deref(), Ok(expected), "{source}");
        }
    }

    #[test]
    fn date_refuses_what_is_not_a_date_and_bad_formats() {
        for (source, words) in [
            (
                "{{ 'yesterday'|date }}",
                "expected an RFC 3339 date-time or epoch seconds",
            ),
            (
                "{{ now|date('%Q') }}",
                "`%Q` is not a valid strftime format",
            ),
            ("{{ 1e300|date }}", "expected an RFC 3339"),
        ] {
            let error = render(source).expect_err(source);
            assert!(
                matches!(&error, RenderError::Failed { line: Some(1), message } if message.contains(words)),
                "{source}: {error:?}"
            );
        }
    }

    #[test]
    fn urlencode_percent_encodes() {
        assert_eq!(
            render("{{ 'a b&c=d/é'|urlencode }}").as_deref(),
            Ok("a%20b%26c%3Dd/%C3%A9")
        );
        assert_eq!(
            render("{{ {'q': 'a b', 'n': 1}|urlencode }}").as_deref(),
            Ok("n=1&q=a%20b")
        );
    }

    #[test]
    fn missing_values_render_empty_unless_strict() {
        let source = "[{{ event.customer.name }}]";
        assert_eq!(render(source).as_deref(), Ok("[]"));
        let strict = Limits {
            strict: true,
            ..Limits::default()
        };
        let error = render_with(source, &strict).expect_err("strict");
        assert!(
            matches!(error, RenderError::Undefined { line: Some(1), .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("every value used must exist"),
            "{error}"
        );
        assert_eq!(
            render_with("{{ event.name2 }}", &strict).as_deref(),
            Ok("value2")
        );
    }

    #[test]
    fn an_endless_loop_runs_out_of_fuel() {
        let nested =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let limits = Limits {
            fuel: 5_000,
            ..Limits::default()
        };
        assert_eq!(
            render_with(nested, &limits),
            Err(RenderError::OutOfFuel { fuel: 5_000 })
        );
        // minijinja refuses a range this long before any loop runs.
        let error = render("{% for i in range(100000000) %}{% endfor %}").expect_err("too long");
        assert!(
            matches!(&error, RenderError::Failed { message, .. } if message.contains("range has too many elements")),
            "{error:?}"
        );
        assert!(render_with("{% for i in range(100) %}{{ i }}{% endfor %}", &limits).is_ok());
    }

    #[test]
    fn output_over_the_limit_is_an_error_not_a_cut_body() {
        let limits = Limits {
            max_output: 1_000,
            ..Limits::default()
        };
        let source = "{% for i in range(N) %}0123456789{% endfor %}";
        let exactly = source.replace('N', "100");
        assert_eq!(render_with(&exactly, &limits).map(|s| s.len()), Ok(1_000));
        assert_eq!(
            render_with(&source.replace('N', "101"), &limits),
            Err(RenderError::OutputTooLarge { max: 1_000 })
        );
        assert_eq!(Limits::default().max_output, 256 * 1024);
    }

    #[test]
    fn size_arguments_that_would_exhaust_memory_are_refused() {
        for source in [
            "{{ 'x'|indent(100000000000000) }}",
            "{{ 'x'|indent(width=100000000000000) }}",
            "{{ 'x'|tojson(indent=100000000000000) }}",
            "{{ [1]|batch(100000000000000)|list }}",
            "{{ [1]|slice(100000000000000)|list }}",
            "{{ '%.99999999999f'|format(1.5) }}",
        ] {
            let error = render(source).expect_err(source);
            assert!(
                matches!(error, RenderError::Failed { .. }),
                "{source}: {error:?}"
            );
        }
        assert_eq!(render("{{ 'a\nb'|indent(2) }}").as_deref(), Ok("a\n  b"));
        assert_eq!(render("{{ '%5.1f'|format(1.25) }}").as_deref(), Ok("  1.2"));
    }

    #[test]
    fn the_default_body_is_sendpulses_example() {
        // Seed 002's example, with its values as our context's.
        let seed = json!([{
            "automation_id": "123456789",
            "title": "New Automation",
            "execution_date": "2022-01-04 09:02:39",
            "email": "example@example.com",
            "phone": "+380631234567",
            "variables": [{ "name1": "value1" }, { "name2": "value2" }]
        }]);
        let mut ctx = ctx();
        ctx.contact.fields.remove("age");
        ctx.event = json!({ "name2": "value2" });
        let body = default_body(&ctx);
        let got: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(got, seed);
        // Key order as in the seed (serde_json's maps would sort them).
        let text = String::from_utf8(body).expect("UTF-8");
        let keys = [
            "automation_id",
            "title",
            "execution_date",
            "email",
            "phone",
            "variables",
        ]
        .map(|k| text.find(&format!("\"{k}\"")).expect(k));
        assert!(keys.is_sorted(), "{text}");
    }

    #[test]
    fn default_body_variables_are_fields_then_new_event_keys_typed() {
        let mut ctx = ctx();
        ctx.contact.phone = None;
        ctx.event = json!({ "age": 1, "zip": "1000", "n": 2.5 });
        let got: Value = serde_json::from_slice(&default_body(&ctx)).expect("JSON");
        assert_eq!(got[0]["phone"], "");
        assert_eq!(
            got[0]["variables"],
            json!([{ "age": 42 }, { "name1": "value1" }, { "n": 2.5 }, { "zip": "1000" }])
        );
        ctx.event = json!(["not", "an", "object"]);
        let got: Value = serde_json::from_slice(&default_body(&ctx)).expect("JSON");
        assert_eq!(
            got[0]["variables"],
            json!([{ "age": 42 }, { "name1": "value1" }])
        );
    }

    #[test]
    fn deeply_nested_blocks_fail_cleanly() {
        let depth = MAX_SOURCE / 22;
        let source = format!(
            "{}{}",
            "{% if x %}".repeat(depth),
            "{% endif %}".repeat(depth)
        );
        match BodyTemplate::compile(&source) {
            Ok(template) => assert!(template.render(&ctx(), &Limits::default()).is_err()),
            Err(error) => assert!(matches!(error, TemplateError::Syntax { .. }), "{error:?}"),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn no_template_or_event_makes_rendering_panic(
            source in r"(\{\{|\{%|%\}|\}\}|\{#|#\}|[a-z. |()'0-9=~*+\[\]-]|event|contact|for|in|if|endif|endfor|set|range|tojson|date|urlencode){0,40}",
            event in json_value(),
        ) {
            if let Ok(template) = BodyTemplate::compile(&source) {
                let mut ctx = ctx();
                ctx.event = event;
                let limits = Limits { fuel: 10_000, max_output: 64 * 1024, strict: false };
                let _ = template.render(&ctx, &limits);
                let _ = template.render(&ctx, &Limits { strict: true, ..limits });
            }
        }

        #[test]
        fn arbitrary_text_never_makes_compile_panic(source in "\\PC{0,200}") {
            let _ = BodyTemplate::compile(&source).map(|t| t.render(&ctx(), &Limits::default()));
        }

        #[test]
        fn literal_text_renders_unchanged(text in "[^{%#]{0,200}") {
            let template = BodyTemplate::compile(&text).expect("literal text compiles");
            prop_assert_eq!(template.render(&ctx(), &Limits::default()), Ok(text));
        }
    }
}
