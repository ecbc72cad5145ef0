//! What the owner's commands print: aligned tables for lists, `key: value` lines for one
//! object, or with `--json` the tool-result objects themselves, one per line.
//!
//! Everything is formatted from the JSON objects the MCP tools return, so the command line
//! and the tools cannot drift apart.

use std::io::{self, Write};

use serde_json::Value;

use super::CliError;

/// Standard output, where a closed pipe (`tokenwarden token list | head`) ends the command
/// quietly instead of panicking.
pub struct Out {
    stdout: io::StdoutLock<'static>,
}

impl Default for Out {
    fn default() -> Out {
        Out::new()
    }
}

impl Out {
    pub fn new() -> Out {
        Out {
            stdout: io::stdout().lock(),
        }
    }

    pub fn line(&mut self, text: impl AsRef<str>) -> Result<(), CliError> {
        writeln!(self.stdout, "{}", text.as_ref()).map_err(write_error)
    }

    pub fn lines(&mut self, lines: &[String]) -> Result<(), CliError> {
        lines.iter().try_for_each(|line| self.line(line))
    }

    /// One JSON object on one line.
    pub fn json(&mut self, value: &Value) -> Result<(), CliError> {
        self.line(value.to_string())
    }

    /// Every field of an object as `key: value` lines, keys aligned.
    pub fn fields(&mut self, object: &Value) -> Result<(), CliError> {
        let Some(map) = object.as_object() else {
            return self.line(cell(object));
        };
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (key, value) in map {
            self.line(format!(
                "{:width$}  {}",
                format!("{key}:"),
                printable(&cell(value)),
                width = width + 1
            ))?;
        }
        Ok(())
    }
}

fn write_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::quiet()
    } else {
        CliError::new(format!("cannot write to standard output: {e}"))
    }
}

/// A JSON value as a table cell: strings bare, lists comma-separated, null as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        other => other.to_string(),
    }
}

/// The columns of `token list`.
pub const TOKEN_COLUMNS: [(&str, &str); 7] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "effective_status"),
    ("BUCKETS", "buckets"),
    ("TOOLS", "tools"),
    ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"),
];

/// The columns of `audit`.
pub const AUDIT_COLUMNS: [(&str, &str); 5] = [
    ("ID", "id"),
    ("AT", "at"),
    ("ACTOR", "actor"),
    ("ACTION", "action"),
    ("TARGET", "target"),
];

/// Rows of objects as an aligned table with a header line. Cells are cut at 40 characters so
/// one long name cannot push every other column off the screen.
pub fn table(columns: &[(&str, &str)], rows: &[Value]) -> Vec<String> {
    const MAX_CELL: usize = 40;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, field)| clip(&printable(&cell(&row[*field])), MAX_CELL))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let format_row = |row: Vec<String>| {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let header = columns
        .iter()
        .map(|(title, _)| (*title).to_owned())
        .collect();
    std::iter::once(format_row(header))
        .chain(cells.into_iter().map(format_row))
        .collect()
}

/// Control characters (a name may hold any) shown as `?` so they cannot rewrite the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max - 1).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_tame_cells() {
        let rows = [
            json!({"id": "tok_a", "name": "short", "tools": ["a", "b"]}),
            json!({"id": "tok_bb", "name": "x\u{1b}[2J", "tools": []}),
        ];
        let lines = table(&[("ID", "id"), ("NAME", "name"), ("TOOLS", "tools")], &rows);
        assert_eq!(
            lines,
            [
                "ID      NAME   TOOLS",
                "tok_a   short  a,b",
                "tok_bb  x?[2J  (none)",
            ]
        );
        assert_eq!(clip(&"n".repeat(50), 40).chars().count(), 40);
    }
}
