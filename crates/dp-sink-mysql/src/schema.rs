//! The one live-table check: a table's mapping (declared or the built-in preset) against the
//! live table at startup, so a mismatch stops the pipeline before the first batch with a
//! message naming the setting and the column, instead of dead-lettering every record later.

use std::collections::BTreeMap;

use mysql_async::prelude::*;

use crate::mapping::{Column, ColumnMapping, ColumnType, WriteMode};
use crate::{MysqlSinkError, TableSpec};

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveColumn {
    pub name: String,
    /// `DATA_TYPE`, lowercase: `varchar`, `bigint`, `decimal`, `datetime`, `longtext`…
    pub data_type: String,
    /// `COLUMN_TYPE`, for messages: `varchar(64)`, `decimal(8,2)`.
    pub column_type: String,
    pub max_chars: Option<u64>,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
    pub nullable: bool,
    /// Whether an insert that leaves it out still gets a value (a default, auto-increment,
    /// generated).
    pub fills_itself: bool,
}

pub(crate) async fn check(conn: &mut mysql_async::Conn, spec: &TableSpec) -> Result<(), MysqlSinkError> {
    let mapping = &spec.mapping;
    let failed = |message: String| MysqlSinkError::Table { table: spec.table.as_str().to_owned(), message };
    type ColumnRow =
        (String, String, String, Option<u64>, Option<u64>, Option<u64>, String, Option<String>, String);
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
             NUMERIC_SCALE, IS_NULLABLE, COLUMN_DEFAULT, LOWER(EXTRA) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (spec.table.as_str(),),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    if rows.is_empty() {
        return Err(failed(format!(
            "table does not exist; run `delivery-pipeline migrate` (see `migrate --dry-run` for the DDL {}.columns makes) \
             or set mysql.create_table = true",
            spec.at
        )));
    }
    let live: Vec<LiveColumn> = rows
        .into_iter()
        .map(|(name, data_type, column_type, max_chars, precision, scale, nullable, default, extra)| {
            // MariaDB reports a NULL default as the text 'NULL'; MySQL as SQL NULL (and then a
            // nullable column still fills itself with NULL).
            let has_default = default.is_some() || nullable == "YES";
            let generated = extra.contains("auto_increment")
                || extra.contains("generated")
                || extra.contains("virtual")
                || extra.contains("persistent");
            LiveColumn {
                name,
                data_type,
                column_type,
                max_chars,
                precision,
                scale,
                nullable: nullable == "YES",
                fills_itself: has_default || generated,
            }
        })
        .collect();
    let stats: Vec<(String, String, u64)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (spec.table.as_str(),),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut unique: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (index, column, non_unique) in stats {
        if non_unique == 0 {
            unique.entry(index).or_default().push(column);
        }
    }
    let mut problems = mismatches(&spec.at, mapping, &live, &unique);
    if mapping.layout.key_optional
        && let Some(i) = problems.iter().position(|p| p.starts_with(&format!("{}.write.key:", spec.at)))
    {
        // The watermark still keeps replays out; the unique key is the second net.
        let missing = problems.remove(i);
        tracing::warn!(table = %spec.table, "{missing}; a replay that gets past the watermark would be stored twice");
    }
    if let Some(first) = problems.first() {
        let more = if problems.len() > 1 {
            format!(" (and {} more: {})", problems.len() - 1, problems[1..].join("; "))
        } else {
            String::new()
        };
        return Err(failed(format!("{first}{more}")));
    }
    if mapping.mode == WriteMode::Upsert && unique.len() > 1 {
        tracing::warn!(
            table = %spec.table,
            unique_keys = ?unique,
            "the table has unique keys besides write.key; an incoming row that conflicts on another one updates that row instead"
        );
    }
    Ok(())
}

/// Every way the mapping and the live table disagree, each naming the setting.
pub(crate) fn mismatches(
    at: &str,
    mapping: &ColumnMapping,
    live: &[LiveColumn],
    unique: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, c) in mapping.columns.iter().enumerate() {
        let here = format!("{at}.columns[{i}] (`{}`)", c.name);
        match live.iter().find(|l| l.name.eq_ignore_ascii_case(&c.name)) {
            None => out.push(format!("{here}: the table has no column `{}`", c.name)),
            Some(l) => {
                if let Err(e) = compatible(c, l) {
                    out.push(format!("{here}: {e}"));
                }
            }
        }
    }
    if let Some(d) = mapping.soft_delete_column() {
        match live.iter().find(|l| l.name.eq_ignore_ascii_case(d)) {
            None => out.push(format!(
                "{at}.write.soft_delete_column: the table has no column `{d}` (add it as DATETIME(3) NULL)"
            )),
            Some(l) if !matches!(l.data_type.as_str(), "datetime" | "timestamp") || !l.nullable => out.push(format!(
                "{at}.write.soft_delete_column: the table's column `{d}` is {}{}; it must be a nullable DATETIME(3)",
                l.column_type,
                if l.nullable { "" } else { " NOT NULL" }
            )),
            Some(_) => {}
        }
    }
    for l in live {
        let soft = mapping.soft_delete_column().is_some_and(|d| d.eq_ignore_ascii_case(&l.name));
        if !soft
            && !l.nullable
            && !l.fills_itself
            && !mapping.columns.iter().any(|c| c.name.eq_ignore_ascii_case(&l.name))
        {
            out.push(format!(
                "{at}.columns: column `{}` is NOT NULL without a default, and no declared column fills it",
                l.name
            ));
        }
    }
    let key: Vec<String> =
        mapping.key.iter().map(|&k| mapping.columns[k].name.to_ascii_lowercase()).collect();
    let is_key = unique
        .values()
        .any(|cols| cols.len() == key.len() && cols.iter().all(|c| key.contains(&c.to_ascii_lowercase())));
    if !is_key {
        let found: Vec<String> = unique.iter().map(|(n, cols)| format!("{n}({})", cols.join(", "))).collect();
        out.push(format!(
            "{at}.write.key: [{}] is not the table's primary key nor one of its unique keys (it has: {})",
            key.join(", "),
            if found.is_empty() { "none".to_owned() } else { found.join(", ") }
        ));
    }
    out
}

/// Whether values of `c` fit the live column `l`.
fn compatible(c: &Column, l: &LiveColumn) -> Result<(), String> {
    let t = l.data_type.as_str();
    let fits_type = match c.kind {
        ColumnType::String => {
            matches!(t, "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext")
        }
        ColumnType::Integer => matches!(t, "tinyint" | "smallint" | "mediumint" | "int" | "bigint"),
        ColumnType::Decimal => t == "decimal",
        ColumnType::Boolean => matches!(t, "tinyint" | "bit" | "smallint" | "int" | "bigint" | "boolean"),
        ColumnType::Timestamp => matches!(t, "datetime" | "timestamp"),
        // MariaDB's JSON is LONGTEXT with a JSON_VALID check.
        ColumnType::Json => matches!(t, "json" | "longtext" | "mediumtext" | "text"),
    };
    if !fits_type {
        return Err(format!("the table's column is {}, which does not hold {}", l.column_type, c.sql_type()));
    }
    if c.kind == ColumnType::String
        && let Some(max) = l.max_chars
        && (c.max_length as u64) > max
    {
        return Err(format!(
            "the table's column is {} ({max} characters) but max_length is {}; lower max_length or widen the column",
            l.column_type, c.max_length
        ));
    }
    if c.kind == ColumnType::Decimal {
        let (p, s) = (l.precision.unwrap_or(0), l.scale.unwrap_or(0));
        if p.saturating_sub(s) < u64::from(c.precision - c.scale) || s < u64::from(c.scale) {
            return Err(format!(
                "the table's column is {} but the mapping allows DECIMAL({},{})",
                l.column_type, c.precision, c.scale
            ));
        }
    }
    if c.nullable() && !l.nullable {
        return Err(
            "the table's column is NOT NULL but records may have no value for it; set `required = true` or a `default`"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{ColumnConfig, WriteConfig};

    fn live(name: &str, data_type: &str, column_type: &str, nullable: bool) -> LiveColumn {
        LiveColumn {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            max_chars: column_type
                .strip_prefix("varchar(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse().ok()),
            precision: None,
            scale: None,
            nullable,
            fills_itself: nullable,
        }
    }

    fn mapping() -> ColumnMapping {
        let cols: Vec<ColumnConfig> = toml::from_str::<toml::Table>(
            r#"
            [[c]]
            name = "tracking_id"
            pointer = "/tracking_id"
            type = "string"
            max_length = 64
            required = true
            [[c]]
            name = "status"
            pointer = "/status"
            type = "string"
            max_length = 32
            [[c]]
            name = "event_time"
            pointer = "/event_time"
            type = "timestamp"
            "#,
        )
        .expect("toml")
        .get("c")
        .cloned()
        .expect("c")
        .try_into()
        .expect("columns");
        let write = WriteConfig { key: vec!["tracking_id".into()], ..WriteConfig::default() };
        ColumnMapping::compile("mysql.routes[0]", &cols, &write, 1 << 20).expect("compiles")
    }

    fn pk() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("PRIMARY".to_owned(), vec!["tracking_id".to_owned()])])
    }

    fn good() -> Vec<LiveColumn> {
        vec![
            live("tracking_id", "varchar", "varchar(64)", false),
            live("status", "varchar", "varchar(32)", true),
            live("event_time", "datetime", "datetime(3)", true),
            LiveColumn { fills_itself: true, ..live("id", "bigint", "bigint unsigned", false) },
        ]
    }

    #[test]
    fn a_matching_table_passes() {
        assert_eq!(mismatches("mysql.routes[0]", &mapping(), &good(), &pk()), Vec::<String>::new());
    }

    #[test]
    fn each_mismatch_names_the_setting_and_the_column() {
        let check = |edit: &dyn Fn(&mut Vec<LiveColumn>), unique: BTreeMap<String, Vec<String>>| {
            let mut l = good();
            edit(&mut l);
            mismatches("mysql.routes[0]", &mapping(), &l, &unique)
        };
        let missing = check(&|l| l.retain(|c| c.name != "status"), pk());
        assert_eq!(missing, ["mysql.routes[0].columns[1] (`status`): the table has no column `status`"]);
        let narrow = check(&|l| l[1] = live("status", "varchar", "varchar(16)", true), pk());
        assert!(narrow[0].contains("varchar(16) (16 characters) but max_length is 32"), "{narrow:?}");
        let wrong_type = check(&|l| l[2] = live("event_time", "varchar", "varchar(40)", true), pk());
        assert!(
            wrong_type[0]
                .starts_with("mysql.routes[0].columns[2] (`event_time`): the table's column is varchar(40)")
        );
        let not_null = check(&|l| l[1] = live("status", "varchar", "varchar(32)", false), pk());
        assert!(not_null[0].contains("NOT NULL but records may have no value"), "{not_null:?}");
        let unfilled = check(&|l| l.push(live("carrier", "varchar", "varchar(8)", false)), pk());
        assert!(unfilled[0].contains("`carrier` is NOT NULL without a default"), "{unfilled:?}");
        let no_key = check(&|_| {}, BTreeMap::from([("PRIMARY".to_owned(), vec!["id".to_owned()])]));
        assert_eq!(
            no_key,
            [
                "mysql.routes[0].write.key: [tracking_id] is not the table's primary key nor one of its unique keys (it has: PRIMARY(id))"
            ]
        );
    }

    #[test]
    fn the_builtin_table_as_created_passes_its_own_check() {
        let builtin = ColumnMapping::builtin("event_id", 1 << 20).expect("preset");
        let text = |n: &str, t: &str, ct: &str, null: bool| live(n, t, ct, null);
        let table = vec![
            LiveColumn { fills_itself: true, ..text("id", "bigint", "bigint(20) unsigned", false) },
            text("event_id", "varchar", "varchar(64)", false),
            text("tracking_id", "varchar", "varchar(64)", true),
            text("status", "varchar", "varchar(32)", true),
            text("event_time", "datetime", "datetime(3)", true),
            // MariaDB's JSON.
            text("payload", "longtext", "longtext", false),
            text("kafka_topic", "varchar", "varchar(249)", false),
            text("kafka_partition", "int", "int(11)", false),
            text("kafka_offset", "bigint", "bigint(20)", false),
            text("kafka_timestamp", "datetime", "datetime(3)", true),
            LiveColumn { fills_itself: true, ..text("ingested_at", "datetime", "datetime(3)", false) },
        ];
        let unique = BTreeMap::from([
            ("PRIMARY".to_owned(), vec!["id".to_owned()]),
            ("uq_event_id".to_owned(), vec!["event_id".to_owned()]),
        ]);
        assert_eq!(mismatches("mysql", &builtin, &table, &unique), Vec::<String>::new());
        let mut narrow = table.clone();
        narrow[3] = text("status", "varchar", "varchar(16)", true);
        let found = mismatches("mysql", &builtin, &narrow, &unique);
        assert!(
            found.len() == 1 && found[0].contains("`status`") && found[0].contains("max_length is 32"),
            "{found:?}"
        );
        let no_unique = BTreeMap::from([("PRIMARY".to_owned(), vec!["id".to_owned()])]);
        let found = mismatches("mysql", &builtin, &table, &no_unique);
        assert!(found.len() == 1 && found[0].starts_with("mysql.write.key:"), "{found:?}");
    }
}
