//! What a MySQL or MariaDB error says about the work that failed, and so what the runtime does
//! with it ([`classify`]).
//!
//! | [`Fault`] | what it is | [`SinkError`] kind | the runtime |
//! | --- | --- | --- | --- |
//! | [`Data`](Fault::Data) | a value of one row refused, by a code known to mean that | permanent | isolates the row by halving the batch, dead-letters it |
//! | [`PresumedData`](Fault::PresumedData) | SQLSTATE class 22 (data exception) or 23 (integrity constraint) with a code not listed here | permanent, [presumed](SinkError::presumed) | the same, unless the batch's first two rows each fail alone exactly as the batch did: then a statement fault |
//! | [`Statement`](Fault::Statement) | the statement or the table is wrong: every row fails alike | statement | retries with backoff, never dead-letters; `/readyz` not ready |
//! | [`Outage`](Fault::Outage) | anything else: connection lost, deadlock, lock wait, read-only, too many connections | transient | retries with backoff |
//!
//! Codes are checked before SQLSTATEs, because a few codes sit in a class that says otherwise:
//! 1052 (a column is ambiguous) is SQLSTATE 23000, an integrity class, yet no row can fix it; 1366
//! and 3819 (an incorrect value, a CHECK constraint on MySQL) report a row's value as `HY000`;
//! 1203 and 1226 (per-user connection and resource limits) are class 42 but pass with time.
//!
//! A statement fault arises when the table changes under a running pipeline (a column dropped or
//! renamed, a `NOT NULL` column added without a default, a trigger that fails, a privilege
//! revoked), or when a declared mapping names something the server will not take for any row (a
//! generated column, say). Unknown codes outside classes 22, 23 and 42 are outages: retried,
//! never dead-lettered, since a wrong "data" verdict would dead-letter good records.

use dp_core::SinkError;

/// What a server error says about the work that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A value of one row is refused, by a code known to mean that: the row is dead-lettered.
    Data,
    /// SQLSTATE class 22 or 23 with a code not known here: taken for a data fault, unless the
    /// runtime finds that the batch's first rows each fail alone with it ([`SinkError::presumed`]).
    PresumedData,
    /// The statement or the schema is wrong, the same for every row: retried, never
    /// dead-lettered.
    Statement,
    /// The server is unreachable, busy, failing over, or the transaction met a deadlock:
    /// retried.
    Outage,
}

/// Codes that name a value of one row, whatever their SQLSTATE: data faults.
pub const DATA_CODES: &[u16] = &[
    1022, // can't write; duplicate key
    1048, // column cannot be null
    1062, // duplicate entry (on a unique key other than the write key)
    1169, // can't write, because of a unique constraint
    1216, // cannot add or update a child row (foreign key, old code)
    1217, // cannot delete or update a parent row (foreign key, old code)
    1263, // NULL supplied to a NOT NULL column
    1264, // out of range value
    1265, // data truncated (SQLSTATE 01000)
    1292, // incorrect datetime value
    1300, // invalid character string
    1365, // division by 0
    1366, // incorrect string/integer value (HY000 on MySQL)
    1367, // illegal value
    1406, // data too long
    1411, // incorrect value for function
    1416, // cannot get a geometry object from the data
    1451, // cannot delete or update a parent row: a foreign key fails
    1452, // cannot add or update a child row: a foreign key fails
    1557, // a foreign key would lead to a duplicate entry
    1586, // duplicate entry for key (with the key's name)
    1690, // value out of range in an expression
    1859, // duplicate entry for a key
    3140, // invalid JSON text (MySQL)
    3819, // check constraint violated (MySQL, HY000)
    4025, // CONSTRAINT failed (MariaDB: a CHECK such as json_valid)
];

/// Codes that say the statement or the schema is wrong, whatever their SQLSTATE: statement
/// faults. Class 42 (syntax error or access rule violation) is one too, as a rule.
pub const STATEMENT_CODES: &[u16] = &[
    1044, // access denied for user to database
    1046, // no database selected (3D000)
    1049, // unknown database
    1051, // unknown table
    1052, // column is ambiguous (SQLSTATE 23000!)
    1054, // unknown column
    1064, // syntax error
    1066, // not a unique table or alias
    1093, // can't specify the target table for update in FROM
    1109, // unknown table
    1110, // column specified twice
    1136, // column count doesn't match value count (21S01)
    1142, // command denied to user for table
    1143, // command denied to user for column
    1146, // table doesn't exist
    1149, // syntax error
    1166, // incorrect column name
    1210, // incorrect arguments to EXECUTE (a prepared statement's parameters)
    1222, // the SELECTs have a different number of columns (21000)
    1227, // access denied; a privilege is needed
    1241, // operand should contain N column(s) (21000)
    1267, // illegal mix of collations
    1270, // illegal mix of collations for an operation
    1271, // illegal mix of collations for an operation
    1288, // the target table is not updatable
    1347, // not a VIEW / not a BASE TABLE
    1356, // a view references invalid tables, columns or functions
    1364, // field doesn't have a default value (a NOT NULL column the insert leaves out)
    1370, // execute command denied to user for a routine
    1442, // can't update the table in a stored function or trigger
    1449, // the definer (of a trigger or view) does not exist
    1471, // the target table is not insertable-into
    1906, // a value given for a generated column (MariaDB)
    3105, // a value given for a generated column is not allowed (MySQL)
    4078, // illegal parameter data types for an operation (MariaDB)
    4079, // illegal parameter data type for an operation (MariaDB)
];

/// Codes of class 42 that are outages, not statement faults: per-user limits, which pass.
pub const OUTAGE_CODES: &[u16] = &[
    1203, // the user already has more than max_user_connections active connections
    1226, // the user has exceeded a resource limit
];

/// What server error `code` with `sqlstate` says about the work that failed (see the module
/// docs for the rule).
pub fn fault_of(code: u16, sqlstate: &str) -> Fault {
    if STATEMENT_CODES.contains(&code) {
        Fault::Statement
    } else if DATA_CODES.contains(&code) {
        Fault::Data
    } else if OUTAGE_CODES.contains(&code) {
        Fault::Outage
    } else if sqlstate.starts_with("22") || sqlstate.starts_with("23") {
        Fault::PresumedData
    } else if sqlstate.starts_with("42") {
        Fault::Statement
    } else {
        Fault::Outage
    }
}

/// Classifies a client error as the runtime needs it: a server error by [`fault_of`], with its
/// code and SQLSTATE attached; a client-side error in the statement's parameters, or a value
/// read back that does not fit its column's type, as a statement fault; every other client
/// error (I/O, a closed connection, a pool that is gone) as an outage.
pub fn classify(context: &str, e: mysql_async::Error) -> SinkError {
    use mysql_async::DriverError as D;
    match &e {
        mysql_async::Error::Server(s) => {
            let base = match fault_of(s.code, &s.state) {
                Fault::Data => SinkError::permanent(context),
                Fault::PresumedData => SinkError::permanent(context).presumed(),
                Fault::Statement => SinkError::statement(context),
                Fault::Outage => SinkError::transient(context),
            };
            base.with_code(u32::from(s.code), Some(s.state.clone())).with_source(e)
        }
        mysql_async::Error::Driver(
            D::StmtParamsMismatch { .. }
            | D::StmtParamsNumberExceedsLimit { .. }
            | D::MixedParams
            | D::Params(_)
            | D::FromValue { .. }
            | D::FromRow { .. },
        ) => SinkError::statement(context).with_source(e),
        _ => SinkError::transient(context).with_source(e),
    }
}

#[cfg(test)]
mod tests {
    use dp_core::ErrorKind;

    use super::*;

    fn server(code: u16, state: &str) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "x".into(),
            state: state.into(),
        })
    }

    fn kind(code: u16, state: &str) -> (ErrorKind, bool) {
        let e = classify("insert", server(code, state));
        assert_eq!((e.code(), e.sqlstate()), (Some(u32::from(code)), Some(state)), "{code} keeps its code");
        (e.kind(), e.is_presumed())
    }

    #[test]
    fn every_listed_code_has_its_kind_whatever_its_sqlstate() {
        // The code decides, whatever class its SQLSTATE is in (1052 is 23000, 1366 and 3819
        // are HY000 on MySQL, 1203 is 42000).
        let states = ["HY000", "23000", "22001", "42000", "42S02", "01000", "21S01"];
        for state in states {
            for &code in DATA_CODES {
                assert_eq!(kind(code, state), (ErrorKind::Permanent, false), "{code} ({state}): data");
                assert_eq!(fault_of(code, state), Fault::Data);
            }
            for &code in STATEMENT_CODES {
                assert_eq!(kind(code, state), (ErrorKind::Statement, false), "{code} ({state}): statement");
            }
            for &code in OUTAGE_CODES {
                assert_eq!(kind(code, state), (ErrorKind::Transient, false), "{code} ({state}): outage");
            }
        }
        for &code in DATA_CODES.iter().chain(STATEMENT_CODES).chain(OUTAGE_CODES) {
            let lists =
                [DATA_CODES, STATEMENT_CODES, OUTAGE_CODES].iter().filter(|l| l.contains(&code)).count();
            assert_eq!(lists, 1, "{code} is in exactly one list");
        }
    }

    #[test]
    fn errors_as_the_servers_send_them_get_their_kind() {
        // Data faults: a value the column refuses.
        for (code, state) in [
            (1406, "22001"), // too long
            (1264, "22003"), // out of range
            (1366, "HY000"), // bad UTF-8 / not an integer (MySQL)
            (1366, "22007"), // the same on MariaDB
            (3140, "22032"), // invalid JSON (MySQL)
            (4025, "23000"), // json_valid CHECK (MariaDB)
            (3819, "HY000"), // CHECK constraint (MySQL)
            (1048, "23000"), // NULL
            (1062, "23000"), // duplicate on another unique key
            (1452, "23000"), // foreign key
            (1265, "01000"), // truncated
            (1292, "22007"), // bad datetime
            (1300, "HY000"), // invalid character string
        ] {
            assert_eq!(kind(code, state), (ErrorKind::Permanent, false), "{code} ({state})");
        }
        // Statement or schema faults: the same for every row.
        for (code, state) in [
            (1052, "23000"), // ambiguous column: class 23, yet no row can fix it
            (1054, "42S22"),
            (1064, "42000"),
            (1146, "42S02"),
            (1142, "42000"),
            (1143, "42000"),
            (1227, "42000"),
            (1110, "42000"),
            (1136, "21S01"),
            (1364, "HY000"), // a NOT NULL column without default that the mapping leaves out
            (1149, "42000"),
            (1166, "42000"),
            (3105, "HY000"), // a generated column written (MySQL)
            (1906, "HY000"), // the same on MariaDB
            (1999, "42000"), // any other class-42 code
            (1999, "42S99"),
        ] {
            assert_eq!(kind(code, state), (ErrorKind::Statement, false), "{code} ({state})");
        }
        // Outages.
        for (code, state) in [
            (1205, "HY000"), // lock wait timeout
            (1213, "40001"), // deadlock
            (1040, "08004"), // too many connections
            (1203, "42000"), // max_user_connections: class 42, but it passes
            (1226, "42000"),
            (1290, "HY000"), // --read-only (a fail-over)
            (1792, "25006"), // read-only transaction
            (1927, "70100"), // connection killed (MariaDB)
            (1969, "70100"), // max_statement_time exceeded (MariaDB)
            (3024, "HY000"), // max_execution_time exceeded (MySQL)
            (1644, "45000"), // a trigger's SIGNAL
            (1615, "HY000"), // prepared statement needs to be re-prepared
            (1045, "28000"), // access denied (login)
            (1999, "HY000"), // an unknown general error
        ] {
            assert_eq!(kind(code, state), (ErrorKind::Transient, false), "{code} ({state})");
        }
        // Unknown codes of a data class: presumed data faults.
        for state in ["22999", "23999", "22000"] {
            assert_eq!(kind(1999, state), (ErrorKind::Permanent, true), "{state}");
        }
    }

    #[test]
    fn client_errors_are_outages_unless_the_statement_is_wrong() {
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::other("connection reset")));
        assert_eq!(classify("insert", io).kind(), ErrorKind::Transient);
        let closed = mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed);
        assert_eq!(classify("insert", closed).kind(), ErrorKind::Transient);
        let gone = mysql_async::Error::Driver(mysql_async::DriverError::PoolDisconnected);
        assert_eq!(classify("insert", gone).kind(), ErrorKind::Transient);
        let params = mysql_async::Error::Driver(mysql_async::DriverError::StmtParamsMismatch {
            required: 9,
            supplied: 8,
        });
        let e = classify("insert", params);
        assert_eq!((e.kind(), e.code()), (ErrorKind::Statement, None));
        assert!(e.to_string().starts_with("insert: "), "{e}");
    }
}
