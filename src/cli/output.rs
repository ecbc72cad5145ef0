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

/// What every empty value (null, no items, no keys) prints as.
pub const EMPTY: &str = "-";

/// A JSON value as a table cell: strings bare, lists comma-separated, anything empty as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => EMPTY.to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => EMPTY.to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => EMPTY.to_owned(),
        other => other.to_string(),
    }
}

/// A token record's fields in groups, most important first: (group title, fields).
const RECORD_GROUPS: &[(&str, &[&str])] = &[
    ("", &["id", "name", "description", "effective_status"]),
    (
        "scope",
        &[
            "buckets",
            "tools",
            "deny_tools",
            "read_only",
            "admin",
            "allowed_ips",
            "environment",
        ],
    ),
    (
        "limits",
        &[
            "expires_at",
            "max_uses",
            "remaining_uses",
            "rate_limit_per_minute",
        ],
    ),
    (
        "status and lineage",
        &["status", "parent_id", "created_by", "depth", "masked"],
    ),
    (
        "times and usage",
        &[
            "created_at",
            "updated_at",
            "paused_at",
            "revoked_at",
            "rotated_at",
            "use_count",
            "last_used_at",
        ],
    ),
    ("", &["metadata"]),
];

/// How a record field reads: empty `allowed_ips` means any address, not none.
fn record_cell(field: &str, value: &Value) -> String {
    match (field, value) {
        ("allowed_ips", Value::Array(items)) if items.is_empty() => "any address".to_owned(),
        ("effective_status" | "status", Value::String(s)) => s.replace('_', " "),
        _ => printable(&cell(value)),
    }
}

/// A token record as `key: value` lines in groups (identity, scope, limits, status and
/// lineage, times), aligned; fields the groups do not name follow at the end.
pub fn record(record: &Value) -> Vec<String> {
    let Some(map) = record.as_object() else {
        return vec![cell(record)];
    };
    let named: Vec<&str> = RECORD_GROUPS
        .iter()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    let others: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !named.contains(k) && *k != "last4")
        .collect();
    // Group members are indented by two: align every value one column after the longest key.
    let width = RECORD_GROUPS
        .iter()
        .flat_map(|(title, fields)| {
            let indent = if title.is_empty() { 0 } else { 2 };
            fields.iter().map(move |f| indent + f.len())
        })
        .chain(others.iter().map(|k| k.len()))
        .max()
        .unwrap_or(0)
        + 1;
    let mut lines = Vec::new();
    let groups = RECORD_GROUPS
        .iter()
        .map(|(title, fields)| (*title, fields.to_vec()))
        .chain(std::iter::once(("", others)));
    for (title, fields) in groups {
        let present: Vec<&str> = fields
            .into_iter()
            .filter(|f| map.contains_key(*f))
            .collect();
        if present.is_empty() {
            continue;
        }
        if !lines.is_empty() {
            lines.push(String::new());
        }
        let indent = if title.is_empty() {
            ""
        } else {
            lines.push(format!("{title}:"));
            "  "
        };
        for field in present {
            let pad = width - indent.len();
            lines.push(format!(
                "{indent}{:pad$} {}",
                format!("{field}:"),
                record_cell(field, &map[field]),
            ));
        }
    }
    lines
}

/// Tokens as a lineage tree: each under its parent, indented; tokens whose parent is not in
/// the list start at the left.
pub fn tree(rows: &[Value]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let ids: HashSet<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut tops = Vec::new();
    for row in rows {
        match row["parent_id"].as_str().filter(|p| ids.contains(p)) {
            Some(parent) => children.entry(parent).or_default().push(row),
            None => tops.push(row),
        }
    }
    let mut lines = Vec::new();
    let mut stack: Vec<(&Value, usize)> = tops.into_iter().rev().map(|r| (r, 0)).collect();
    while let Some((row, depth)) = stack.pop() {
        lines.push(format!(
            "{}{}  {}  {}",
            "  ".repeat(depth),
            cell(&row["id"]),
            printable(&clip(&cell(&row["name"]), 40)),
            record_cell("effective_status", &row["effective_status"]),
        ));
        if let Some(kids) = row["id"].as_str().and_then(|id| children.get(id)) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    lines
}

/// The columns of `token list`.
pub const TOKEN_COLUMNS: [(&str, &str); 8] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("PARENT", "parent_id"),
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
pub(crate) fn printable(text: &str) -> String {
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
                "tok_bb  x?[2J  -",
            ]
        );
        assert_eq!(clip(&"n".repeat(50), 40).chars().count(), 40);
    }

    #[test]
    fn records_print_in_groups_with_one_style_for_empty() {
        let lines = record(&json!({
            "name": "ci", "id": "tok_a", "buckets": ["docs"], "tools": [], "allowed_ips": [],
            "metadata": {}, "expires_at": null, "parent_id": null, "effective_status": "paused_by_ancestor",
        }));
        let pad = |key: &str, value: &str| format!("{key:24} {value}");
        assert_eq!(lines[0], pad("id:", "tok_a"));
        assert_eq!(lines[1], pad("name:", "ci"));
        assert_eq!(lines[2], pad("effective_status:", "paused by ancestor"));
        assert!(lines.contains(&"scope:".to_owned()), "{lines:?}");
        assert!(lines.contains(&pad("  tools:", "-")), "{lines:?}");
        assert!(
            lines.contains(&pad("  allowed_ips:", "any address")),
            "{lines:?}"
        );
        assert!(lines.contains(&pad("  expires_at:", "-")), "{lines:?}");
        assert!(lines.contains(&pad("metadata:", "-")), "{lines:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("(none)") || l.contains("{}"))
        );
    }

    #[test]
    fn trees_indent_children_under_their_parents() {
        let rows = [
            json!({"id": "tok_c", "name": "grandchild", "parent_id": "tok_b", "effective_status": "active"}),
            json!({"id": "tok_b", "name": "child", "parent_id": "tok_a", "effective_status": "active"}),
            json!({"id": "tok_a", "name": "root", "parent_id": null, "effective_status": "active"}),
            json!({"id": "tok_x", "name": "orphan", "parent_id": "tok_gone", "effective_status": "revoked"}),
        ];
        assert_eq!(
            tree(&rows),
            [
                "tok_a  root  active",
                "  tok_b  child  active",
                "    tok_c  grandchild  active",
                "tok_x  orphan  revoked",
            ]
        );
    }
}
