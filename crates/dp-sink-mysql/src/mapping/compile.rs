//! Compiling column settings into a [`ColumnMapping`], checked once at startup; errors name
//! the setting.

use mysql_async::Value;
use time::format_description::OwnedFormatItem;

use super::delete::{self, Deletes};
use super::extract;
use super::settings::{ColumnConfig, ColumnType, WriteConfig, WriteMode};
use crate::sql::{self, Ident, OnConflict, UpsertSyntax};

/// Where a column's value comes from, resolved.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// Path segments into the payload (the first one is a top-level field).
    Pointer(Vec<String>),
    IngestTime,
    KafkaTopic,
    KafkaPartition,
    KafkaOffset,
    KafkaTimestamp,
    KafkaKey,
    /// UUID v5 of `topic/partition/offset` ([`kafka_uuid`](super::kafka_uuid)).
    KafkaUuid,
    Payload,
    Header(String),
}

/// How a timestamp is written.
#[derive(Debug, Clone)]
pub(crate) enum TimeFormat {
    Rfc3339,
    UnixSeconds,
    UnixMillis,
    Custom(Box<OwnedFormatItem>),
}

/// One compiled column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column's name.
    pub name: String,
    pub(crate) origin: Origin,
    /// Taken when a pointer finds no value.
    pub(crate) fallback: Option<Origin>,
    /// Its type.
    pub kind: ColumnType,
    /// Strings: the most characters.
    pub max_length: usize,
    /// Decimals: total digits.
    pub precision: u32,
    /// Decimals: digits after the point.
    pub scale: u32,
    pub(crate) format: TimeFormat,
    /// Absent values are refused.
    pub required: bool,
    pub(crate) default: Option<Value>,
    /// Part of the write key: a blank string is refused.
    pub(crate) is_key: bool,
}

impl Origin {
    /// Whether every record has a value here.
    fn always_present(&self) -> bool {
        matches!(
            self,
            Self::IngestTime
                | Self::KafkaTopic
                | Self::KafkaPartition
                | Self::KafkaOffset
                | Self::KafkaUuid
                | Self::Payload
        )
    }
}

impl Column {
    /// Whether the column can ever be NULL.
    pub fn nullable(&self) -> bool {
        if self.required || self.default.is_some() {
            return false;
        }
        !self.origin.always_present() && !self.fallback.as_ref().is_some_and(Origin::always_present)
    }
}

/// A checked declarative mapping: the columns in statement order, and how rows are written.
#[derive(Debug, Clone)]
pub struct ColumnMapping {
    /// The columns, in placeholder order.
    pub columns: Vec<Column>,
    /// How rows are written.
    pub mode: WriteMode,
    /// Positions of the key columns in `columns`.
    pub key: Vec<usize>,
    /// Position of the guard column, if any.
    pub guard: Option<usize>,
    /// How tombstones delete rows (`write.delete = "tombstone"`).
    pub(crate) deletes: Option<Deletes>,
    /// The column names as identifiers, in placeholder order.
    pub(crate) idents: Vec<Ident>,
    /// First segments of every pointer: the top-level fields to keep while parsing.
    pub(crate) top_level: Vec<String>,
    /// Whether any column takes the whole payload.
    pub(crate) takes_payload: bool,
    pub(crate) max_payload_bytes: usize,
    /// What `CREATE TABLE` adds around the columns.
    pub(crate) layout: Layout,
}

/// What a table's definition holds besides the mapped columns: columns the server fills,
/// and its keys. Declared tables have none of the former and their write key as the primary
/// key; the built-in table ([`ColumnMapping::builtin`]) has more.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    /// Columns the server fills, defined before the mapped ones: (name, definition).
    pub leading: Vec<(&'static str, &'static str)>,
    /// Columns the server fills, defined after the mapped ones.
    pub trailing: Vec<(&'static str, &'static str)>,
    /// The primary key's columns when it is not the write key.
    pub primary_key: Option<Vec<&'static str>>,
    /// The write key as a unique key of this name (when the primary key is another).
    pub key_name: Option<&'static str>,
    /// Other indexes: (name, columns).
    pub indexes: Vec<(&'static str, Vec<&'static str>)>,
    /// A live table without a unique key on the write key is only warned about: the
    /// watermark still keeps replays out (the built-in table, whose unique key a DBA may drop).
    pub key_optional: bool,
}

/// Default `max_length` of a string column.
pub const DEFAULT_STRING_LENGTH: usize = 255;

impl ColumnMapping {
    /// Checks `columns` and `write` and compiles them. `at` names the settings for errors
    /// (`mysql`, `mysql.routes[1]`).
    pub fn compile(
        at: &str,
        columns: &[ColumnConfig],
        write: &WriteConfig,
        max_payload_bytes: usize,
    ) -> Result<Self, String> {
        if columns.is_empty() {
            return Err(format!("{at}.columns: declare at least one column"));
        }
        let mut compiled = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let here = format!("{at}.columns[{i}] (`{}`)", c.name);
            if Ident::new(&c.name).is_none() {
                return Err(format!(
                    "{here}: the name is not a plain identifier (1-64 of [A-Za-z0-9_], not starting with a digit)"
                ));
            }
            if compiled.iter().any(|d: &Column| d.name.eq_ignore_ascii_case(&c.name)) {
                return Err(format!("{here}: the column is declared twice"));
            }
            let mut column = compile_column(&here, c)?;
            column.is_key = write.key.iter().any(|k| k.eq_ignore_ascii_case(&c.name));
            compiled.push(column);
        }
        let position = |what: &str, name: &str| {
            compiled.iter().position(|c| c.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
                format!("{at}.write.{what}: `{name}` is not one of the declared columns of {at}.columns")
            })
        };
        if write.key.is_empty() {
            return Err(format!(
                "{at}.write.key: name the column(s) of the table's primary or unique key (for example [\"event_id\"]); \
                 it is what makes a replayed record a no-op"
            ));
        }
        let mut key = Vec::new();
        for k in &write.key {
            let p = position("key", k)?;
            if compiled[p].nullable() {
                return Err(format!(
                    "{at}.write.key: key column `{k}` could be NULL; make it `required = true` or give it a `default`"
                ));
            }
            if key.contains(&p) {
                return Err(format!("{at}.write.key: `{k}` is listed twice"));
            }
            key.push(p);
        }
        let guard = match &write.guard {
            None => None,
            Some(_) if write.mode == WriteMode::Insert => {
                return Err(format!(
                    "{at}.write.guard: a guard only applies to mode = \"upsert\" (inserts never change a row)"
                ));
            }
            Some(g) => {
                let p = position("guard", g)?;
                if !matches!(compiled[p].kind, ColumnType::Integer | ColumnType::Timestamp) {
                    return Err(format!(
                        "{at}.write.guard: `{g}` is {} column; a guard must be an integer or a timestamp",
                        compiled[p].kind.article()
                    ));
                }
                if key.contains(&p) {
                    return Err(format!(
                        "{at}.write.guard: `{g}` is a key column; it cannot also be the guard"
                    ));
                }
                Some(p)
            }
        };
        let deletes = delete::compile(at, write, &compiled, &key, guard)?;
        if write.mode == WriteMode::Upsert && key.len() == compiled.len() {
            return Err(format!(
                "{at}.write: every column is a key column, so an upsert has nothing to update"
            ));
        }
        let mut top_level: Vec<String> = Vec::new();
        for c in &compiled {
            if let Origin::Pointer(path) = &c.origin
                && !top_level.contains(&path[0])
            {
                top_level.push(path[0].clone());
            }
        }
        let idents = compiled.iter().filter_map(|c| Ident::new(&c.name)).collect();
        let takes_payload = compiled.iter().any(|c| matches!(c.origin, Origin::Payload));
        Ok(Self {
            columns: compiled,
            mode: write.mode,
            key,
            guard,
            deletes,
            idents,
            top_level,
            takes_payload,
            max_payload_bytes,
            layout: Layout::default(),
        })
    }

    /// The column names, in placeholder order.
    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// What the write does with a row whose key exists, for [`sql::write_rows`].
    pub fn on_conflict(&self) -> OnConflict<'_> {
        match self.mode {
            WriteMode::Insert => OnConflict::Keep { key: self.key[0] },
            WriteMode::Upsert => OnConflict::Update {
                key: &self.key,
                guard: self.guard,
                undelete: self.deletes.as_ref().and_then(|d| d.soft.as_ref()),
            },
        }
    }

    /// True when a record's Kafka key is read: by a `kafka_key` column (or fallback), or by
    /// deletes, which find their row by it.
    pub fn reads_key(&self) -> bool {
        self.deletes.is_some()
            || self
                .columns
                .iter()
                .any(|c| matches!(c.origin, Origin::KafkaKey) || matches!(c.fallback, Some(Origin::KafkaKey)))
    }

    /// The multi-row statement writing `rows` rows to `table`.
    pub fn statement(&self, table: &Ident, syntax: UpsertSyntax, rows: usize) -> String {
        sql::write_rows(table, &self.idents, self.on_conflict(), syntax, rows)
    }
}

fn compile_column(here: &str, c: &ColumnConfig) -> Result<Column, String> {
    let origin = match (&c.pointer, &c.computed) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(format!("{here}: set exactly one of `pointer` and `computed`"));
        }
        (Some(p), None) => {
            Origin::Pointer(parse_pointer(p).map_err(|e| format!("{here}: pointer `{p}` {e}"))?)
        }
        (None, Some(what)) => match what.as_str() {
            "ingest_time" => Origin::IngestTime,
            "kafka_topic" => Origin::KafkaTopic,
            "kafka_partition" => Origin::KafkaPartition,
            "kafka_offset" => Origin::KafkaOffset,
            "kafka_timestamp" => Origin::KafkaTimestamp,
            other => computed(other).ok_or_else(|| format!("{here}: computed = {}", not_computed(other)))?,
        },
    };
    let fallback = match (&c.fallback, &origin) {
        (None, _) => None,
        (Some(_), o) if !matches!(o, Origin::Pointer(_)) => {
            return Err(format!("{here}: `fallback` applies to pointer columns only"));
        }
        (Some(what), _) => {
            let fb = computed(what).ok_or_else(|| format!("{here}: fallback = {}", not_computed(what)))?;
            if matches!(fb, Origin::Header(_)) {
                return Err(format!("{here}: fallback = `{what}`: a header cannot be a fallback"));
            }
            Some(fb)
        }
    };
    let natural = natural_type(&origin);
    let kind = match (c.kind, natural) {
        (Some(k), None) => k,
        (None, Some(n)) => n,
        (None, None) => {
            return Err(format!("{here}: set `type` (string, integer, decimal, boolean, timestamp or json)"));
        }
        (Some(k), Some(n)) if k == n || (n == ColumnType::Json && k == ColumnType::String) => k,
        (Some(k), Some(n)) => {
            return Err(format!(
                "{here}: computed = `{}` is {}, not {}",
                c.computed.as_deref().unwrap_or_default(),
                n.article(),
                k.article()
            ));
        }
    };
    if let (Some(fb), Some(what)) = (fallback.as_ref().and_then(natural_type), &c.fallback)
        && !(fb == kind || (fb == ColumnType::Json && kind == ColumnType::String))
    {
        return Err(format!("{here}: fallback = `{what}` is {}, not {}", fb.article(), kind.article()));
    }
    let only = |set: bool, key: &str, for_kind: ColumnType| {
        if set && kind != for_kind {
            Err(format!("{here}: `{key}` applies to {} columns only", for_kind.as_str()))
        } else {
            Ok(())
        }
    };
    only(c.max_length.is_some(), "max_length", ColumnType::String)?;
    only(c.precision.is_some() || c.scale.is_some(), "precision/scale", ColumnType::Decimal)?;
    only(c.format.is_some(), "format", ColumnType::Timestamp)?;
    let max_length = c.max_length.unwrap_or(DEFAULT_STRING_LENGTH);
    if kind == ColumnType::String && !(1..=16_777_215).contains(&max_length) {
        return Err(format!("{here}: max_length must be between 1 and 16777215"));
    }
    let (precision, scale) = match kind {
        ColumnType::Decimal => {
            let p = c
                .precision
                .ok_or_else(|| format!("{here}: a decimal needs `precision` (total digits, 1-65)"))?;
            let s = c.scale.unwrap_or(0);
            if !(1..=65).contains(&p) || s > 30 || s > p {
                return Err(format!(
                    "{here}: precision must be 1-65 and scale 0-30 and at most the precision"
                ));
            }
            (p, s)
        }
        _ => (0, 0),
    };
    let format = match c.format.as_deref() {
        None | Some("rfc3339") => TimeFormat::Rfc3339,
        Some("unix_seconds") => TimeFormat::UnixSeconds,
        Some("unix_millis") => TimeFormat::UnixMillis,
        Some(desc) => {
            TimeFormat::Custom(Box::new(time::format_description::parse_owned::<2>(desc).map_err(|e| {
                format!("{here}: format `{desc}` is not a valid time format description: {e}")
            })?))
        }
    };
    let mut column = Column {
        name: c.name.clone(),
        origin,
        fallback,
        kind,
        max_length,
        precision,
        scale,
        format,
        required: c.required,
        default: None,
        is_key: false,
    };
    if let Some(d) = &c.default {
        if d.is_null() {
            return Err(format!("{here}: default = null is the same as no default"));
        }
        let text = d.to_string();
        let value = match &column.origin {
            Origin::Pointer(_) => extract::from_json(&column, &text),
            _ => match d.as_str() {
                Some(s) => extract::from_text(&column, s),
                None => extract::from_json(&column, &text),
            },
        }
        .map_err(|r| format!("{here}: default {text} does not fit the column: {}", r.reason))?;
        column.default = Some(value);
    }
    Ok(column)
}

/// Splits an RFC 6901 pointer into its unescaped segments.
fn parse_pointer(p: &str) -> Result<Vec<String>, &'static str> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("must start with `/` (for example `/status` or `/address/city`)");
    };
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let mut s = String::with_capacity(seg.len());
        let mut chars = seg.chars();
        while let Some(ch) = chars.next() {
            if ch == '~' {
                match chars.next() {
                    Some('0') => s.push('~'),
                    Some('1') => s.push('/'),
                    _ => return Err("has a `~` not followed by 0 or 1"),
                }
            } else {
                s.push(ch);
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// The computed value `what` names, if it names one.
fn computed(what: &str) -> Option<Origin> {
    Some(match what {
        "ingest_time" => Origin::IngestTime,
        "kafka_topic" => Origin::KafkaTopic,
        "kafka_partition" => Origin::KafkaPartition,
        "kafka_offset" => Origin::KafkaOffset,
        "kafka_timestamp" => Origin::KafkaTimestamp,
        "kafka_key" => Origin::KafkaKey,
        "kafka_uuid" => Origin::KafkaUuid,
        "payload" => Origin::Payload,
        h if h.starts_with("header:") && h.len() > "header:".len() => {
            Origin::Header(h["header:".len()..].to_owned())
        }
        _ => return None,
    })
}

fn not_computed(what: &str) -> String {
    format!(
        "`{what}` is not one of ingest_time, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
         kafka_key, kafka_uuid, payload, header:<name>"
    )
}

/// The type a computed value has by nature; `None` for pointers and headers (declared).
fn natural_type(origin: &Origin) -> Option<ColumnType> {
    match origin {
        Origin::IngestTime | Origin::KafkaTimestamp => Some(ColumnType::Timestamp),
        Origin::KafkaTopic | Origin::KafkaKey | Origin::KafkaUuid => Some(ColumnType::String),
        Origin::KafkaPartition | Origin::KafkaOffset => Some(ColumnType::Integer),
        Origin::Payload => Some(ColumnType::Json),
        Origin::Pointer(_) | Origin::Header(_) => None,
    }
}
