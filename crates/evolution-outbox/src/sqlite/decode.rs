//! SQLite rows as [`Columns`]: the decoding itself is shared with every SQL backend (`crate::rows`).

use rusqlite::Row;
use rusqlite::types::FromSql;

pub(super) use crate::rows::{
    Columns, DELIVERY_SELECT, Decoder, DestinationJson, attempt_record, channel_named, instance_record,
    log_record, scope_str, stored_event,
};

fn get<T: FromSql>(row: &Row<'_>, column: &str) -> Result<T, String> {
    row.get(column).map_err(|e| format!("column {column}: {e}"))
}

impl Columns for Row<'_> {
    fn text(&self, column: &str) -> Result<String, String> {
        get(self, column)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, String> {
        get(self, column)
    }

    fn int(&self, column: &str) -> Result<i64, String> {
        get(self, column)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, String> {
        get(self, column)
    }
}
