//! The one DDL builder of mapped tables: `CREATE TABLE` from the columns, their types and the
//! table's layout (server-filled columns, keys, indexes).

use super::compile::{Column, ColumnMapping, Origin};
use super::settings::ColumnType;
use crate::sql::Ident;

impl Column {
    /// The column's type in `CREATE TABLE`.
    pub fn sql_type(&self) -> String {
        match self.kind {
            ColumnType::String if self.max_length <= 16_383 => format!("VARCHAR({})", self.max_length),
            ColumnType::String => "MEDIUMTEXT".into(),
            // Kafka partitions are 32-bit.
            ColumnType::Integer if matches!(self.origin, Origin::KafkaPartition) => "INT".into(),
            ColumnType::Integer => "BIGINT".into(),
            ColumnType::Decimal => format!("DECIMAL({},{})", self.precision, self.scale),
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::Timestamp => "DATETIME(3)".into(),
            ColumnType::Json => "JSON".into(),
        }
    }
}

impl ColumnMapping {
    /// `CREATE TABLE IF NOT EXISTS` for this mapping: the columns the server fills, the mapped
    /// columns, the primary key (the write key unless the layout names another), the write key
    /// as a unique key when it is not the primary one, and the layout's other indexes.
    pub fn create_table(&self, table: &Ident) -> String {
        let quoted = |cols: &mut dyn Iterator<Item = &str>| {
            cols.map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        };
        let layout = &self.layout;
        let mut lines: Vec<String> = layout.leading.iter().map(|(n, def)| format!("  `{n}` {def}")).collect();
        lines.extend(self.columns.iter().map(|c| {
            format!("  `{}` {} {}", c.name, c.sql_type(), if c.nullable() { "NULL" } else { "NOT NULL" })
        }));
        if let Some(d) = self.soft_delete_column() {
            lines.push(format!("  `{d}` DATETIME(3) NULL"));
        }
        lines.extend(layout.trailing.iter().map(|(n, def)| format!("  `{n}` {def}")));
        let key = quoted(&mut self.key.iter().map(|&i| self.columns[i].name.as_str()));
        match &layout.primary_key {
            None => lines.push(format!("  PRIMARY KEY ({key})")),
            Some(primary) => {
                lines.push(format!("  PRIMARY KEY ({})", quoted(&mut primary.iter().copied())));
                lines.push(format!("  UNIQUE KEY `{}` ({key})", layout.key_name.unwrap_or("uq_write_key")));
            }
        }
        for (name, cols) in &layout.indexes {
            lines.push(format!("  KEY `{name}` ({})", quoted(&mut cols.iter().copied())));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            lines.join(",\n")
        )
    }
}
