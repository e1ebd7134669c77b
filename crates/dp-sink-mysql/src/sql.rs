//! SQL text: the fixed tables' definitions, multi-row statements, and how a batch is split
//! into them. A leaf: it knows identifiers and counts, not mappings or configs.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Columns written per dead-letter entry, in placeholder order.
pub const DEAD_LETTER_COLUMNS: &[&str] = &[
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "kafka_key",
    "payload",
    "record",
    "error_class",
    "mysql_errno",
    "sqlstate",
    "reason",
];

/// The most placeholders one prepared statement may have (the protocol's 16-bit count).
pub const MAX_PLACEHOLDERS: usize = 65_535;

/// A table or column name that is safe to quote: 1-64 of `[A-Za-z0-9_]`, not starting with a
/// digit. Displayed back-quoted, as statements use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(Arc<str>);

impl Ident {
    /// `name` as an identifier, if it is a plain one.
    pub fn new(name: &str) -> Option<Self> {
        let plain = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        plain.then(|| Self(Arc::from(name)))
    }

    /// The name, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the dead-letter table.
pub fn create_dead_letter_table(table: &Ident) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n\
         \x20 `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,\n\
         \x20 `kafka_topic` VARCHAR(249) NOT NULL,\n\
         \x20 `kafka_partition` INT NOT NULL,\n\
         \x20 `kafka_offset` BIGINT NOT NULL,\n\
         \x20 `kafka_timestamp` DATETIME(3) NULL,\n\
         \x20 `kafka_key` BLOB NULL,\n\
         \x20 `payload` LONGBLOB NULL COMMENT 'the message value, byte for byte',\n\
         \x20 `record` LONGBLOB NOT NULL COMMENT 'the whole record (key, headers, value) in the versioned buffer encoding',\n\
         \x20 `error_class` VARCHAR(32) NOT NULL,\n\
         \x20 `mysql_errno` INT UNSIGNED NULL,\n\
         \x20 `sqlstate` CHAR(5) NULL,\n\
         \x20 `reason` TEXT NOT NULL,\n\
         \x20 `attempts` INT UNSIGNED NOT NULL DEFAULT 1,\n\
         \x20 `first_failed_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),\n\
         \x20 `last_failed_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),\n\
         \x20 PRIMARY KEY (`id`),\n\
         \x20 UNIQUE KEY `uq_coordinates` (`kafka_topic`, `kafka_partition`, `kafka_offset`)\n\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )
}

/// `CREATE TABLE IF NOT EXISTS` for the offset watermark: per consumer group and partition, the
/// next offset to consume, written in the same transaction as the rows it covers.
pub fn create_offsets_table(table: &Ident) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n\
         \x20 `consumer_group` VARCHAR(255) NOT NULL,\n\
         \x20 `topic` VARCHAR(249) NOT NULL,\n\
         \x20 `kafka_partition` INT NOT NULL,\n\
         \x20 `next_offset` BIGINT NOT NULL COMMENT 'every offset below this is stored or dead-lettered',\n\
         \x20 `stored_ranges` TEXT NULL COMMENT 'ranges above next_offset stored too (commit_policy after_buffer): start-end,... with end exclusive',\n\
         \x20 `updated_at` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),\n\
         \x20 PRIMARY KEY (`consumer_group`, `topic`, `kafka_partition`)\n\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )
}

/// Adds the `stored_ranges` column to an offsets table created before it existed.
pub fn add_stored_ranges_column(table: &Ident) -> String {
    format!(
        "ALTER TABLE {table} ADD COLUMN `stored_ranges` TEXT NULL \
         COMMENT 'ranges above next_offset stored too (commit_policy after_buffer): start-end,... with end exclusive' \
         AFTER `next_offset`"
    )
}

/// Reads (and locks, for the rest of the transaction) the stored offsets of `partitions`
/// partitions of one consumer group. Parameters: the group, then topic and partition pairs.
pub fn lock_offsets(table: &Ident, partitions: usize) -> String {
    format!(
        "SELECT `topic`, `kafka_partition`, `next_offset`, `stored_ranges` FROM {table} \
         WHERE `consumer_group` = ? AND (`topic`, `kafka_partition`) IN ({}) FOR UPDATE",
        vec!["(?,?)"; partitions.max(1)].join(",")
    )
}

/// Reads the watermarks of one group's partitions without locking.
pub fn read_offsets(table: &Ident, partitions: usize) -> String {
    format!(
        "SELECT `topic`, `kafka_partition`, `next_offset` FROM {table} \
         WHERE `consumer_group` = ? AND (`topic`, `kafka_partition`) IN ({})",
        vec!["(?,?)"; partitions.max(1)].join(",")
    )
}

/// Creates the missing rows of `partitions` partitions (watermark 0, no ranges) and leaves the
/// existing ones as they are. Parameters: group, topic and partition, per row.
pub fn seed_offsets(table: &Ident, partitions: usize) -> String {
    format!(
        "INSERT INTO {table} (`consumer_group`, `topic`, `kafka_partition`, `next_offset`) VALUES {} \
         ON DUPLICATE KEY UPDATE `next_offset` = `next_offset`",
        vec!["(?,?,?,0)"; partitions.max(1)].join(",")
    )
}

/// Writes the stored offsets of `partitions` partitions, computed from the rows this
/// transaction locked; the watermark is never lowered. Parameters: group, topic, partition,
/// next offset and ranges text, per row.
pub fn advance_offsets(table: &Ident, syntax: UpsertSyntax, partitions: usize) -> String {
    format!(
        "INSERT INTO {table} (`consumer_group`, `topic`, `kafka_partition`, `next_offset`, `stored_ranges`) \
         VALUES {}{} ON DUPLICATE KEY UPDATE `next_offset` = GREATEST({}, {}), `stored_ranges` = {}",
        values_list(5, partitions),
        syntax.alias(),
        syntax.stored(table, "next_offset"),
        syntax.incoming("next_offset"),
        syntax.incoming("stored_ranges"),
    )
}

/// Sets the watermarks of `partitions` partitions to the given offsets, lowering or raising
/// them, and forgets their stored ranges (an operator's rewind). Parameters: group, topic,
/// partition and next offset, per row.
pub fn reset_offsets(table: &Ident, syntax: UpsertSyntax, partitions: usize) -> String {
    format!(
        "INSERT INTO {table} (`consumer_group`, `topic`, `kafka_partition`, `next_offset`, `stored_ranges`) \
         VALUES {}{} ON DUPLICATE KEY UPDATE `next_offset` = {}, `stored_ranges` = NULL",
        vec!["(?,?,?,?,NULL)"; partitions.max(1)].join(","),
        syntax.alias(),
        syntax.incoming("next_offset"),
    )
}

fn values_list(columns: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; columns].join(","));
    vec![one; rows].join(",")
}

fn column_list(columns: &[&str]) -> String {
    columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(",")
}

/// How an upsert's `ON DUPLICATE KEY UPDATE` refers to the incoming row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertSyntax {
    /// `VALUES(col)`: MariaDB, and MySQL before 8.0.19.
    ValuesFunction,
    /// A row alias, `VALUES (…) AS dp_new … dp_new.col`: MySQL 8.0.19 and later, where
    /// `VALUES(col)` is deprecated.
    RowAlias,
}

impl UpsertSyntax {
    /// What follows the `VALUES` list: the row alias, or nothing.
    fn alias(self) -> &'static str {
        match self {
            Self::ValuesFunction => "",
            Self::RowAlias => " AS dp_new",
        }
    }

    /// The incoming row's value of column `c`, in `ON DUPLICATE KEY UPDATE`.
    fn incoming(self, c: &str) -> String {
        match self {
            Self::ValuesFunction => format!("VALUES(`{c}`)"),
            Self::RowAlias => format!("dp_new.`{c}`"),
        }
    }

    /// The stored row's value of column `c` of `table`, in `ON DUPLICATE KEY UPDATE`. Next to
    /// the row alias a bare name is ambiguous when the alias has that column too (MySQL:
    /// `Column 'event_time' in field list is ambiguous`), so it is qualified with the table.
    fn stored(self, table: &Ident, c: &str) -> String {
        match self {
            Self::ValuesFunction => format!("`{c}`"),
            Self::RowAlias => format!("{table}.`{c}`"),
        }
    }

    /// The syntax for a server reporting `version` (`SELECT VERSION()`).
    pub fn for_server(version: &str) -> Self {
        if version.to_ascii_lowercase().contains("mariadb") {
            return Self::ValuesFunction;
        }
        let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if v >= (8, 0, 19) { Self::RowAlias } else { Self::ValuesFunction }
    }
}

/// What a multi-row write does with a row whose key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict<'a> {
    /// Leave it as it is: a no-op update of the key column at this position, so only a key
    /// conflict is absorbed, never a data error (`INSERT IGNORE` would also turn data errors
    /// into warnings and truncate silently). A duplicate counts 0 affected rows, a new row 1.
    Keep {
        /// Position of a key column.
        key: usize,
    },
    /// Give it the incoming values of every column but the key's; with a guard (a position),
    /// only when the incoming guard is greater than the stored one (or the stored one is NULL).
    Update {
        /// Positions of the key columns.
        key: &'a [usize],
        /// Position of the guard column.
        guard: Option<usize>,
        /// The soft-delete column, which an applied update sets back to NULL.
        undelete: Option<&'a Ident>,
    },
}

/// A multi-row write of `rows` rows of `columns` to `table`.
///
/// MySQL applies an upsert's assignments left to right, each seeing the ones before, so the
/// guard column is assigned last: the conditions before it still compare with the stored value.
pub fn write_rows(
    table: &Ident,
    columns: &[Ident],
    on_conflict: OnConflict<'_>,
    syntax: UpsertSyntax,
    rows: usize,
) -> String {
    let names: Vec<&str> = columns.iter().map(Ident::as_str).collect();
    let mut out =
        format!("INSERT INTO {table} ({}) VALUES {}", column_list(&names), values_list(names.len(), rows));
    let (key, guard, undelete) = match on_conflict {
        OnConflict::Keep { key } => {
            let k = &columns[key];
            out.push_str(&format!(" ON DUPLICATE KEY UPDATE {k} = {k}"));
            return out;
        }
        OnConflict::Update { key, guard, undelete } => (key, guard, undelete),
    };
    out.push_str(syntax.alias());
    out.push_str(" ON DUPLICATE KEY UPDATE ");
    let incoming = |c: &str| syntax.incoming(c);
    let stored = |c: &str| syntax.stored(table, c);
    let mut order: Vec<usize> = (0..names.len()).filter(|i| !key.contains(i) && Some(*i) != guard).collect();
    order.extend(guard);
    let condition = guard.map(|g| {
        let g = names[g];
        format!("({0} IS NULL OR {1} > {0})", stored(g), incoming(g))
    });
    let mut assignments: Vec<String> = order
        .iter()
        .map(|&i| {
            let c = names[i];
            match &condition {
                Some(cond) => format!("`{c}` = IF({cond}, {}, {})", incoming(c), stored(c)),
                None => format!("`{c}` = {}", incoming(c)),
            }
        })
        .collect();
    if let Some(d) = undelete {
        let d = d.as_str();
        let clear = match &condition {
            Some(cond) => format!("`{d}` = IF({cond}, NULL, {})", stored(d)),
            None => format!("`{d}` = NULL"),
        };
        // Before the guard's assignment, which must stay last.
        assignments.insert(order.len() - usize::from(guard.is_some()), clear);
    }
    out.push_str(&assignments.join(", "));
    out
}

/// A multi-row delete of the rows with `rows` keys (per row, `key.len()` placeholders, then one
/// for the guard when there is one): a row is deleted unless its guard is greater than the
/// tombstone's. With `soft`, the row is kept and that column set to the tombstone's time
/// unless it is set already: the statement first takes, per row, the key's placeholders and
/// the time, then the conditions' as a delete does.
pub fn delete_rows(
    table: &Ident,
    key: &[&Ident],
    guard: Option<&Ident>,
    soft: Option<&Ident>,
    rows: usize,
) -> String {
    let mut one = key.iter().map(|k| format!("{k} = ?")).collect::<Vec<_>>().join(" AND ");
    let matches = one.clone();
    if let Some(g) = guard {
        one.push_str(&format!(" AND ({g} IS NULL OR {g} <= ?)"));
    }
    let condition = vec![format!("({one})"); rows].join(" OR ");
    match soft {
        None => format!("DELETE FROM {table} WHERE {condition}"),
        Some(d) => {
            let cases = vec![format!("WHEN {matches} THEN ?"); rows].join(" ");
            format!("UPDATE {table} SET {d} = CASE {cases} END WHERE {d} IS NULL AND ({condition})")
        }
    }
}

/// What an upsert statement of `rows` rows did, from its affected-row count (1 per inserted
/// row, 2 per updated row, 0 per row left unchanged) and its info string
/// (`Records: 3  Duplicates: 1  Warnings: 0`, where `Duplicates` counts the rows updated).
pub fn upsert_outcome(rows: usize, affected: usize, info: &str) -> dp_core::BatchOutcome {
    let updated = info
        .split("Duplicates:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        // A one-row statement sends no info string; its affected count says it all.
        .unwrap_or(usize::from(rows == 1 && affected == 2))
        .min(rows);
    let inserted = affected.saturating_sub(2 * updated).min(rows - updated);
    dp_core::BatchOutcome {
        inserted,
        updated,
        duplicates: rows - inserted - updated,
        ..dp_core::BatchOutcome::default()
    }
}

/// A multi-row insert of dead-letter entries; a repeat of the same coordinates counts another
/// attempt and keeps the newest reason.
pub fn insert_dead_letters(table: &Ident, syntax: UpsertSyntax, rows: usize) -> String {
    let newest: Vec<String> = ["error_class", "mysql_errno", "sqlstate", "reason"]
        .iter()
        .map(|c| format!("`{c}` = {}", syntax.incoming(c)))
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES {}{} ON DUPLICATE KEY UPDATE \
         `attempts` = {} + 1, `last_failed_at` = CURRENT_TIMESTAMP(3), {}",
        column_list(DEAD_LETTER_COLUMNS),
        values_list(DEAD_LETTER_COLUMNS.len(), rows),
        syntax.alias(),
        syntax.stored(table, "attempts"),
        newest.join(", ")
    )
}

/// Splits rows into consecutive statements that respect both the placeholder limit and a byte
/// budget (a fraction of the server's `max_allowed_packet`). A row larger than the budget gets
/// a statement of its own.
pub fn plan_statements(
    row_bytes: impl IntoIterator<Item = usize>,
    columns: usize,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let max_rows = max_rows.min(MAX_PLACEHOLDERS / columns.max(1)).max(1);
    let mut out = Vec::new();
    let (mut start, mut n, mut bytes) = (0usize, 0usize, 0usize);
    for (i, b) in row_bytes.into_iter().enumerate() {
        if n > 0 && (n == max_rows || bytes + b > max_bytes) {
            out.push(start..i);
            (start, n, bytes) = (i, 0, 0);
        }
        n += 1;
        bytes += b;
    }
    if n > 0 {
        out.push(start..start + n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Ident {
        Ident::new(name).expect("a plain identifier")
    }

    #[test]
    fn identifiers_refuse_sql_metacharacters() {
        assert_eq!(id("delivery_events").to_string(), "`delivery_events`");
        assert_eq!(id("_t1").as_str(), "_t1");
        for bad in ["", "1abc", "a-b", "a`b", "a;drop table x", "a b", "t'", &"x".repeat(65)] {
            assert!(Ident::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn dead_letter_inserts_have_one_placeholder_per_column_per_row() {
        for syntax in [UpsertSyntax::ValuesFunction, UpsertSyntax::RowAlias] {
            assert_eq!(
                insert_dead_letters(&id("d"), syntax, 2).matches('?').count(),
                2 * DEAD_LETTER_COLUMNS.len()
            );
        }
    }

    /// `tracking_id`, `status`, `event_time` keyed on `tracking_id`: as an insert, or an upsert
    /// with an optional guard (`event_time`).
    fn status(mode: &str, guard: bool, syntax: UpsertSyntax, rows: usize) -> String {
        let (s, columns) = (id("s"), [id("tracking_id"), id("status"), id("event_time")]);
        let on_conflict = match mode {
            "insert" => OnConflict::Keep { key: 0 },
            _ => OnConflict::Update { key: &[0], guard: guard.then_some(2), undelete: None },
        };
        write_rows(&s, &columns, on_conflict, syntax, rows)
    }

    #[test]
    fn declared_inserts_absorb_key_conflicts_only() {
        let sql = status("insert", false, UpsertSyntax::ValuesFunction, 2);
        assert_eq!(
            sql,
            "INSERT INTO `s` (`tracking_id`,`status`,`event_time`) VALUES (?,?,?),(?,?,?) \
             ON DUPLICATE KEY UPDATE `tracking_id` = `tracking_id`"
        );
    }

    #[test]
    fn guarded_upserts_compare_before_assigning_the_guard_last() {
        let cond = "(`event_time` IS NULL OR VALUES(`event_time`) > `event_time`)";
        assert_eq!(
            status("upsert", true, UpsertSyntax::ValuesFunction, 1),
            format!(
                "INSERT INTO `s` (`tracking_id`,`status`,`event_time`) VALUES (?,?,?) ON DUPLICATE KEY UPDATE \
                 `status` = IF({cond}, VALUES(`status`), `status`), `event_time` = IF({cond}, VALUES(`event_time`), `event_time`)"
            )
        );
        // Every stored value is qualified with the table: a bare `event_time` is ambiguous
        // next to the row alias on MySQL.
        let cond = "(`s`.`event_time` IS NULL OR dp_new.`event_time` > `s`.`event_time`)";
        assert_eq!(
            status("upsert", true, UpsertSyntax::RowAlias, 1),
            format!(
                "INSERT INTO `s` (`tracking_id`,`status`,`event_time`) VALUES (?,?,?) AS dp_new ON DUPLICATE KEY UPDATE \
                 `status` = IF({cond}, dp_new.`status`, `s`.`status`), \
                 `event_time` = IF({cond}, dp_new.`event_time`, `s`.`event_time`)"
            )
        );
        let plain = status("upsert", false, UpsertSyntax::ValuesFunction, 1);
        assert!(plain.ends_with(
            "ON DUPLICATE KEY UPDATE `status` = VALUES(`status`), `event_time` = VALUES(`event_time`)"
        ));
    }

    #[test]
    fn the_row_alias_is_used_from_mysql_8_0_19_only() {
        assert_eq!(UpsertSyntax::for_server("10.11.19-MariaDB-0+deb12u1"), UpsertSyntax::ValuesFunction);
        assert_eq!(UpsertSyntax::for_server("11.4.2-MariaDB"), UpsertSyntax::ValuesFunction);
        assert_eq!(UpsertSyntax::for_server("8.0.18"), UpsertSyntax::ValuesFunction);
        assert_eq!(UpsertSyntax::for_server("5.7.44-log"), UpsertSyntax::ValuesFunction);
        assert_eq!(UpsertSyntax::for_server("8.0.19"), UpsertSyntax::RowAlias);
        assert_eq!(UpsertSyntax::for_server("8.4.3"), UpsertSyntax::RowAlias);
        assert_eq!(UpsertSyntax::for_server("9.1.0-commercial"), UpsertSyntax::RowAlias);
    }

    #[test]
    fn upsert_outcomes_split_inserts_updates_and_no_ops() {
        let o = |rows, affected, info| {
            let o = upsert_outcome(rows, affected, info);
            (o.inserted, o.updated, o.duplicates)
        };
        // 2 new, 1 updated (2 affected), 1 unchanged (0 affected, not a "duplicate" either).
        assert_eq!(o(4, 4, "Records: 4  Duplicates: 1  Warnings: 0"), (2, 1, 1));
        assert_eq!(o(3, 0, "Records: 3  Duplicates: 0  Warnings: 0"), (0, 0, 3));
        assert_eq!(o(2, 2, "Records: 2  Duplicates: 1  Warnings: 0"), (0, 1, 1));
        assert_eq!(o(1, 1, ""), (1, 0, 0));
        assert_eq!(o(1, 2, ""), (0, 1, 0));
        assert_eq!(o(1, 0, ""), (0, 0, 1));
    }

    #[test]
    fn watermark_statements_lock_and_only_raise() {
        let lock = lock_offsets(&id("o"), 3);
        assert_eq!(lock.matches('?').count(), 1 + 3 * 2);
        assert!(lock.ends_with("FOR UPDATE"));
        assert!(!read_offsets(&id("o"), 3).contains("FOR UPDATE"));
        assert!(lock.contains("`stored_ranges`"));
        let adv = advance_offsets(&id("o"), UpsertSyntax::ValuesFunction, 2);
        assert_eq!(adv.matches('?').count(), 10);
        let seed = seed_offsets(&id("o"), 2);
        assert_eq!(seed.matches('?').count(), 6);
        assert!(seed.ends_with("`next_offset` = `next_offset`"), "seeding changes no existing row");
        assert!(adv.contains("GREATEST(`next_offset`, VALUES(`next_offset`))"));
        let adv = advance_offsets(&id("o"), UpsertSyntax::RowAlias, 2);
        assert!(
            adv.ends_with(
                "AS dp_new ON DUPLICATE KEY UPDATE `next_offset` = GREATEST(`o`.`next_offset`, dp_new.`next_offset`), \
                 `stored_ranges` = dp_new.`stored_ranges`"
            ),
            "{adv}"
        );
    }

    #[test]
    fn mysql_statements_use_the_row_alias_and_qualify_stored_columns() {
        let statements = [
            status("upsert", true, UpsertSyntax::RowAlias, 2),
            status("upsert", false, UpsertSyntax::RowAlias, 2),
            insert_dead_letters(&id("d"), UpsertSyntax::RowAlias, 2),
            advance_offsets(&id("o"), UpsertSyntax::RowAlias, 2),
        ];
        for sql in &statements {
            assert!(!sql.contains("VALUES("), "VALUES() is deprecated on MySQL: {sql}");
            assert!(sql.contains(") AS dp_new ON DUPLICATE KEY UPDATE "), "{sql}");
        }
        assert!(
            statements[2].contains("`attempts` = `d`.`attempts` + 1")
                && statements[2].ends_with("`reason` = dp_new.`reason`"),
            "{}",
            statements[2]
        );
        // Insert mode needs no alias: its no-op update reads no incoming value.
        let insert = status("insert", false, UpsertSyntax::RowAlias, 1);
        assert!(insert.ends_with(") ON DUPLICATE KEY UPDATE `tracking_id` = `tracking_id`"), "{insert}");
    }

    #[test]
    fn plans_cover_every_row_once_within_limits() {
        assert!(plan_statements([], 9, 1000, 100).is_empty());
        assert_eq!(plan_statements([10; 5], 9, 2, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan_statements([40, 40, 40], 9, 1000, 100), vec![0..2, 2..3]);
        assert_eq!(
            plan_statements([500, 10, 10], 9, 1000, 100),
            vec![0..1, 1..3],
            "an oversized row stands alone"
        );
        // 65,535 placeholders / 9 columns = 7,281 rows at most.
        let plan = plan_statements(vec![1; 10_000], 9, usize::MAX, usize::MAX);
        assert_eq!(plan, vec![0..7281, 7281..10_000]);
    }

    #[test]
    fn deletes_spare_rows_with_a_newer_guard_and_soft_deletes_keep_the_first_time() {
        let (s, k, g, d) = (id("s"), id("tracking_id"), id("event_time"), id("deleted_at"));
        assert_eq!(
            delete_rows(&s, &[&k], None, None, 2),
            "DELETE FROM `s` WHERE (`tracking_id` = ?) OR (`tracking_id` = ?)"
        );
        let one = "(`tracking_id` = ? AND (`event_time` IS NULL OR `event_time` <= ?))";
        assert_eq!(
            delete_rows(&s, &[&k], Some(&g), None, 2),
            format!("DELETE FROM `s` WHERE {one} OR {one}")
        );
        let (a, b) = (id("a"), id("b"));
        let soft = delete_rows(&s, &[&a, &b], None, Some(&d), 2);
        assert_eq!(
            soft,
            "UPDATE `s` SET `deleted_at` = CASE WHEN `a` = ? AND `b` = ? THEN ? WHEN `a` = ? AND `b` = ? THEN ? END \
             WHERE `deleted_at` IS NULL AND ((`a` = ? AND `b` = ?) OR (`a` = ? AND `b` = ?))"
        );
        assert_eq!(soft.matches('?').count(), 2 * (2 + 1) + 2 * 2);
    }

    #[test]
    fn an_applied_upsert_clears_the_soft_delete_mark_before_assigning_the_guard() {
        let (s, columns, d) =
            (id("s"), [id("tracking_id"), id("status"), id("event_time")], id("deleted_at"));
        let guarded = OnConflict::Update { key: &[0], guard: Some(2), undelete: Some(&d) };
        let cond = "(`event_time` IS NULL OR VALUES(`event_time`) > `event_time`)";
        assert!(
            write_rows(&s, &columns, guarded, UpsertSyntax::ValuesFunction, 1).ends_with(&format!(
                "`status` = IF({cond}, VALUES(`status`), `status`), `deleted_at` = IF({cond}, NULL, `deleted_at`), \
                 `event_time` = IF({cond}, VALUES(`event_time`), `event_time`)"
            ))
        );
        let plain = OnConflict::Update { key: &[0], guard: None, undelete: Some(&d) };
        assert!(write_rows(&s, &columns, plain, UpsertSyntax::RowAlias, 1).ends_with(
            "`status` = dp_new.`status`, `event_time` = dp_new.`event_time`, `deleted_at` = NULL"
        ));
    }
}
