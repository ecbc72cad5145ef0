//! The upstreams file: the `mcpServers` object of `claude_desktop_config.json` / `.mcp.json`
//! (SPEC §10). Each key is a bucket; each entry is a stdio command or a streamable-HTTP URL.
//! Every mistake in the file is refused with one line naming the entry, before anything
//! connects. What the file cannot control is not a mistake in it: an entry whose `${VAR}` is
//! not set in this environment is kept, unavailable with that reason ([`Upstream::unavailable`]),
//! so that one missing variable takes down only its own bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::rules::scope::is_bucket_name;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

impl Transport {
    /// `stdio` or `http`, as `list_buckets` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Stdio { .. } => "stdio",
            Transport::Http { .. } => "http",
        }
    }
}

/// One upstream MCP server: its bucket name and how to reach and treat it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub bucket: String,
    pub transport: Transport,
    /// Patterns of the upstream's own tool names that count as read-only, replacing its
    /// annotations (which are the upstream's claims). `None`: trust `readOnlyHint`.
    pub read_only_tools: Option<Vec<String>>,
    pub timeout: Duration,
    /// Why this entry cannot be used in this environment (a `${VAR}` that is not set): its
    /// bucket is unavailable with this reason and nothing is started or connected.
    pub unavailable: Option<String>,
}

/// Every enabled upstream, by bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamsConfig {
    pub upstreams: BTreeMap<String, Upstream>,
}

/// Reads and checks the upstreams file, expanding `${VAR}` from this process's environment.
pub fn load(path: &Path) -> Result<UpstreamsConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read upstreams file {}: {e}", path.display()))?;
    parse(&text, &|name| std::env::var(name).ok())
        .map_err(|e| format!("upstreams file {}: {e}", path.display()))
}

/// Parses the file's text; `var` looks up environment variables (a parameter for tests).
pub fn parse(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<UpstreamsConfig, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let servers = root
        .get("mcpServers")
        .and_then(Value::as_object)
        .ok_or("expected an object with an \"mcpServers\" object")?;
    let mut upstreams = BTreeMap::new();
    for (key, entry) in servers {
        let shown = crate::secret::truncate_for_message(key);
        if !is_bucket_name(key) || key == "*" {
            return Err(format!(
                "entry {shown:?}: the key is the bucket name and must match \
                 ^[a-z0-9][a-z0-9_-]{{0,62}}$"
            ));
        }
        // Exposed names are `<bucket>__<tool>`: a key with `__` or a trailing `_` could make
        // two buckets' tools share a name (bucket `a__b` tool `c`, bucket `a` tool `b__c`).
        if key.contains("__") || key.ends_with('_') {
            return Err(format!(
                "entry {shown:?}: the bucket name must not contain \"__\" or end in \"_\" \
                 (exposed tool names are <bucket>__<tool>)"
            ));
        }
        // A variable that is not set is the environment's doing, not the file's: the entry is
        // checked as if it were set to "" and kept, unavailable, naming every missing one.
        let missing = std::cell::RefCell::new(Vec::<String>::new());
        let lookup = |name: &str| {
            let value = var(name);
            if value.is_none() && !missing.borrow().iter().any(|m| m == name) {
                missing.borrow_mut().push(name.to_owned());
            }
            Some(value.unwrap_or_default())
        };
        let upstream = parse_entry(key, entry, &lookup, &missing)
            .map_err(|e| format!("entry {shown:?}: {e}"))?;
        if let Some(mut upstream) = upstream {
            let missing = missing.into_inner();
            if !missing.is_empty() {
                let (noun, verb) = if missing.len() == 1 {
                    ("variable", "is")
                } else {
                    ("variables", "are")
                };
                upstream.unavailable = Some(format!(
                    "environment {noun} {} {verb} not set",
                    missing.join(", ")
                ));
            }
            upstreams.insert(key.clone(), upstream);
        }
    }
    Ok(UpstreamsConfig { upstreams })
}

/// `Ok(None)` for a disabled entry (still checked, so a typo is found before it is enabled).
/// `unset` collects the variables `var` did not find (it then answers "").
fn parse_entry(
    bucket: &str,
    entry: &Value,
    var: &dyn Fn(&str) -> Option<String>,
    unset: &std::cell::RefCell<Vec<String>>,
) -> Result<Option<Upstream>, String> {
    let entry = entry.as_object().ok_or("expected an object")?;
    // Other clients' keys (e.g. "description", "autoApprove") are tolerated, as Claude's are.
    let kind = match entry.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err("\"type\" must be a string".into()),
    };
    let transport = match (kind, entry.get("url"), entry.get("command")) {
        (Some("http" | "streamable-http" | "streamableHttp"), _, _) | (None, Some(_), None) => {
            let url = string(entry, "url")?.ok_or("an http entry needs \"url\"")?;
            let unset_before = unset.borrow().len();
            let url = expand(&url, var)?;
            // With a variable unset the URL cannot be judged; its bucket is unavailable anyway.
            let judged = unset.borrow().len() == unset_before;
            if judged && !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "\"url\" must start with http:// or https://, not {:?}",
                    crate::secret::truncate_for_message(&url)
                ));
            }
            Transport::Http {
                url,
                headers: string_map(entry, "headers", var)?,
            }
        }
        (Some("stdio") | None, _, _) => {
            let command = string(entry, "command")?
                .filter(|c| !c.trim().is_empty())
                .ok_or("a stdio entry needs \"command\"")?;
            let args = match entry.get("args") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|a| match a {
                        Value::String(s) => expand(s, var),
                        _ => Err("\"args\" must be an array of strings".to_owned()),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("\"args\" must be an array of strings".into()),
            };
            Transport::Stdio {
                command,
                args,
                env: string_map(entry, "env", var)?,
                cwd: string(entry, "cwd")?.map(PathBuf::from),
            }
        }
        (Some(other), _, _) => {
            return Err(format!(
                "unknown type {:?}: use \"stdio\", \"http\" or \"streamable-http\"",
                crate::secret::truncate_for_message(other)
            ));
        }
    };
    let read_only_tools = match entry.get("readOnlyTools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|p| match p {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err("\"readOnlyTools\" must be an array of tool name patterns"),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err("\"readOnlyTools\" must be an array of tool name patterns".into()),
    };
    let timeout = match entry.get("timeoutSeconds") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
            _ => {
                return Err(
                    "\"timeoutSeconds\" must be a number of seconds, 0 < s <= 86400".into(),
                );
            }
        },
    };
    let disabled = match entry.get("disabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"disabled\" must be true or false".into()),
    };
    if disabled {
        return Ok(None);
    }
    Ok(Some(Upstream {
        bucket: bucket.to_owned(),
        transport,
        read_only_tools,
        timeout,
        unavailable: None,
    }))
}

fn string(entry: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

fn string_map(
    entry: &Map<String, Value>,
    key: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), expand(s, var)?)),
                _ => Err(format!("\"{key}\" values must be strings")),
            })
            .collect(),
        Some(_) => Err(format!("\"{key}\" must be an object of strings")),
    }
}

/// Replaces every `${NAME}` with the variable's value; a missing variable is an error naming
/// it. Values never appear in errors (they may be credentials).
pub fn expand(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or("unterminated ${ in a value: write ${NAME}")?;
        let name = &after[..end];
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid variable name {:?} in ${{…}}",
                crate::secret::truncate_for_message(name)
            ));
        }
        if name == "TOKENWARDEN_TOKEN" {
            // The caller's bearer never goes upstream, not even through the config.
            return Err("${TOKENWARDEN_TOKEN} cannot be used in the upstreams file".to_owned());
        }
        let value = var(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOME_DIR").then(|| "/home/me".to_owned())
    }

    #[test]
    fn parses_stdio_and_http_entries() {
        let text = r#"{"mcpServers": {
            "fs": {"command": "npx", "args": ["-y", "server-filesystem", "${HOME_DIR}/docs"],
                   "readOnlyTools": ["read_*"], "timeoutSeconds": 5},
            "web": {"type": "http", "url": "http://127.0.0.1:3001/mcp",
                    "headers": {"Authorization": "Bearer ${HOME_DIR}"}},
            "off": {"command": "x", "disabled": true}
        }}"#;
        let config = parse(text, &env).unwrap();
        assert_eq!(config.upstreams.len(), 2);
        let fs = &config.upstreams["fs"];
        assert_eq!(fs.timeout, Duration::from_secs(5));
        assert_eq!(
            fs.read_only_tools.as_deref(),
            Some(&["read_*".to_owned()][..])
        );
        match &fs.transport {
            Transport::Stdio { args, .. } => assert_eq!(args[2], "/home/me/docs"),
            other => panic!("{other:?}"),
        }
        match &config.upstreams["web"].transport {
            Transport::Http { headers, .. } => {
                assert_eq!(headers["Authorization"], "Bearer /home/me")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.upstreams["web"].timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn every_mistake_is_one_line_naming_the_entry() {
        let cases = [
            (
                r#"{"mcpServers": {"Bad Key": {"command": "x"}}}"#,
                "\"Bad Key\"",
            ),
            (
                r#"{"mcpServers": {"a": {"type": "sse", "url": "http://x"}}}"#,
                "unknown type",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "args": ["${NOPE"]}}}"#,
                "unterminated",
            ),
            (
                r#"{"mcpServers": {"a": {"type": "http"}}}"#,
                "needs \"url\"",
            ),
            (
                r#"{"mcpServers": {"a": {"args": []}}}"#,
                "needs \"command\"",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "timeoutSeconds": -1}}}"#,
                "timeoutSeconds",
            ),
            (r#"{"mcpServers": {"a": {"url": "ftp://x"}}}"#, "http://"),
            (r#"{"servers": {}}"#, "mcpServers"),
            (
                r#"{"mcpServers": {"a": {"url": "http://x/?t=${TOKENWARDEN_TOKEN}"}}}"#,
                "TOKENWARDEN_TOKEN} cannot be used",
            ),
            (
                r#"{"mcpServers": {"a__b": {"command": "x"}}}"#,
                "entry \"a__b\": the bucket name must not contain",
            ),
            (
                r#"{"mcpServers": {"a_": {"command": "x"}}}"#,
                "entry \"a_\": the bucket name must not contain",
            ),
            ("not json", "invalid JSON"),
        ];
        for (text, needle) in cases {
            let error = parse(text, &env).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let error = parse(
            r#"{"mcpServers": {"a": {"command": "x", "args": ["${NOPE"]}}}"#,
            &env,
        )
        .unwrap_err();
        assert!(error.starts_with("entry \"a\""), "{error}");
    }

    #[test]
    fn an_unset_variable_makes_only_its_entry_unavailable() {
        let text = r#"{"mcpServers": {
            "fs": {"command": "npx", "args": ["${HOME_DIR}/docs"]},
            "search": {"type": "http", "url": "http://127.0.0.1:3001/mcp",
                       "headers": {"X-Api-Key": "${SEARCH_API_KEY}", "X-Other": "${NOPE}"}},
            "remote": {"url": "${REMOTE_URL}"},
            "tool": {"command": "x", "env": {"A": "${NOPE}", "B": "${NOPE}"}}
        }}"#;
        let config = parse(text, &env).unwrap();
        assert_eq!(config.upstreams["fs"].unavailable, None);
        assert_eq!(
            config.upstreams["search"].unavailable.as_deref(),
            Some("environment variables SEARCH_API_KEY, NOPE are not set")
        );
        assert_eq!(
            config.upstreams["remote"].unavailable.as_deref(),
            Some("environment variable REMOTE_URL is not set")
        );
        assert_eq!(
            config.upstreams["tool"].unavailable.as_deref(),
            Some("environment variable NOPE is not set")
        );
        // Still a mistake in the file, whatever the environment: a set variable whose URL is
        // not http, and a bad entry next to an unset variable.
        let error = parse(r#"{"mcpServers": {"a": {"url": "${HOME_DIR}"}}}"#, &env).unwrap_err();
        assert!(error.contains("http://"), "{error}");
        let error = parse(
            r#"{"mcpServers": {"a": {"command": "x", "args": ["${NOPE}"], "timeoutSeconds": 0}}}"#,
            &env,
        )
        .unwrap_err();
        assert!(error.contains("timeoutSeconds"), "{error}");
    }
}
