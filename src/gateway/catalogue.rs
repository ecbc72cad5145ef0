//! The merged catalogue: every connected upstream's tools under `<bucket>__<tool>` names made
//! to fit MCP's tool-name rules deterministically (SPEC §10), with each tool's read-only flag.
//! Pure: built from the upstreams' tool lists, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::model::Tool;

/// The longest tool name MCP clients accept.
pub const MAX_NAME: usize = 64;
const HASH_LEN: usize = 6;
const SEPARATOR: &str = "__";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// One upstream tool as clients see it.
#[derive(Clone, Debug)]
pub struct ExposedTool {
    /// The fitted `<bucket>__<tool>` name.
    pub name: String,
    pub bucket: String,
    /// The upstream's own name, sent upstream unchanged.
    pub upstream_name: String,
    /// Whether a read-only token may call it (annotation, or the `readOnlyTools` override).
    pub read_only: bool,
    /// The upstream's definition with only the name changed.
    pub definition: Tool,
}

/// Every exposed tool, by exposed name, in name order.
#[derive(Debug, Default)]
pub struct Catalogue {
    tools: BTreeMap<String, Arc<ExposedTool>>,
}

/// The tools one upstream listed, and how its read-only flags are decided.
pub struct UpstreamTools<'a> {
    pub bucket: &'a str,
    pub tools: &'a [Tool],
    pub read_only_tools: Option<&'a [String]>,
}

impl Catalogue {
    /// Merges the upstreams' lists. Each name depends only on its own tool (see
    /// [`fit_name`]), so a new upstream tool never renames an existing one. If an altered name
    /// still equals another tool's name (an upstream crafting a tool named like another's
    /// fitted name, or a hash collision), the unaltered name wins, then the smaller full name;
    /// the loser is left out with a warning, whatever the listing order.
    pub fn build(upstreams: &[UpstreamTools<'_>]) -> Catalogue {
        let mut candidates: Vec<(bool, String, String, &UpstreamTools<'_>, &Tool)> = Vec::new();
        for upstream in upstreams {
            for tool in upstream.tools {
                let full = format!("{}{SEPARATOR}{}", upstream.bucket, tool.name);
                let name = fit_name(&full);
                candidates.push((name != full, full, name, upstream, tool));
            }
        }
        // Unaltered names first, then by full name: who wins a clash is independent of order.
        candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut tools = BTreeMap::new();
        for (_, _, name, upstream, tool) in candidates {
            let read_only = match upstream.read_only_tools {
                Some(patterns) => patterns
                    .iter()
                    .any(|p| upstream_pattern_matches(p, &tool.name)),
                None => tool
                    .annotations
                    .as_ref()
                    .and_then(|a| a.read_only_hint)
                    .unwrap_or(false),
            };
            let mut definition = tool.clone();
            definition.name = name.clone().into();
            if tools.contains_key(&name) {
                // Keep the winner and say so rather than route calls to the wrong tool.
                tracing::warn!(target: "upstream", bucket = upstream.bucket, tool = %tool.name,
                    "tool name collides with another after fitting; not exposed");
                continue;
            }
            tools.insert(
                name.clone(),
                Arc::new(ExposedTool {
                    name,
                    bucket: upstream.bucket.to_owned(),
                    upstream_name: tool.name.to_string(),
                    read_only,
                    definition,
                }),
            );
        }
        Catalogue { tools }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ExposedTool>> {
        self.tools.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ExposedTool>> {
        self.tools.values()
    }

    pub fn in_bucket<'a>(&'a self, bucket: &'a str) -> impl Iterator<Item = &'a Arc<ExposedTool>> {
        self.tools.values().filter(move |t| t.bucket == bucket)
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// A `readOnlyTools` pattern against an upstream's own tool name: exact, `*`, or `prefix*`.
pub fn upstream_pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Characters outside `[A-Za-z0-9_.-]` become `_`.
fn sanitise(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `full` made to fit, depending only on `full`: kept as is when valid (`[A-Za-z0-9_.-]`,
/// at most 64 characters); otherwise sanitised, cut, and always given `_` and a hash of the
/// full name, so two altered names never meet by accident.
pub fn fit_name(full: &str) -> String {
    let clean = sanitise(full);
    if clean == full && !full.is_empty() && full.len() <= MAX_NAME {
        clean
    } else {
        with_hash(&clean, full)
    }
}

/// `clean` cut so that `_` and six base62 characters of a hash of `full` fit in 64.
fn with_hash(clean: &str, full: &str) -> String {
    let keep = clean.len().min(MAX_NAME - 1 - HASH_LEN);
    // `clean` is ASCII, so any byte index is a character boundary.
    format!("{}_{}", &clean[..keep], hash62(full))
}

fn hash62(full: &str) -> String {
    let digest = blake3::hash(full.as_bytes());
    let mut n = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    let mut out = [b'0'; HASH_LEN];
    for d in out.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ToolAnnotations;

    fn tool(name: &str, read_only: Option<bool>) -> Tool {
        let mut t = Tool::new(name.to_owned(), "d", Arc::new(Default::default()));
        if let Some(ro) = read_only {
            t = t.with_annotations(ToolAnnotations::new().read_only(ro));
        }
        t
    }

    fn valid(name: &str) -> bool {
        (1..=MAX_NAME).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    }

    #[test]
    fn short_valid_names_are_kept() {
        assert_eq!(fit_name("fs__read_file"), "fs__read_file");
    }

    #[test]
    fn altered_names_always_get_the_hash() {
        let fitted = fit_name("fs__a/b c");
        assert_eq!(fitted.len(), "fs__a_b_c".len() + 1 + HASH_LEN);
        assert!(fitted.starts_with("fs__a_b_c_"), "{fitted}");
        assert!(valid(&fitted));
        assert_eq!(fitted, fit_name("fs__a/b c"), "deterministic");
        assert_ne!(fitted, fit_name("fs__a b/c"));
        let accented = fit_name("fs__é");
        assert!(
            accented.starts_with("fs___") && valid(&accented),
            "{accented}"
        );
    }

    #[test]
    fn long_names_are_truncated_with_a_stable_hash() {
        let long = format!("fs__{}", "x".repeat(200));
        let fitted = fit_name(&long);
        assert_eq!(fitted.len(), MAX_NAME);
        assert!(valid(&fitted));
        assert!(fitted.starts_with(&"fs__xxxx".to_string()));
        assert_eq!(fitted, fit_name(&long), "deterministic");
        let other = format!("fs__{}y", "x".repeat(200));
        assert_ne!(fitted, fit_name(&other), "the hash tells long names apart");
        assert_eq!(&fitted[..57], &fit_name(&other)[..57]);
    }

    fn names(tools: &[Tool]) -> BTreeMap<String, String> {
        Catalogue::build(&[UpstreamTools {
            bucket: "fs",
            tools,
            read_only_tools: None,
        }])
        .iter()
        .map(|t| (t.upstream_name.clone(), t.name.clone()))
        .collect()
    }

    #[test]
    fn a_new_tool_never_renames_an_existing_one() {
        let before = names(&[tool("write_file", None), tool("a/b", None)]);
        assert_eq!(before["write_file"], "fs__write_file");
        let slash = before["a/b"].clone();
        assert!(slash.starts_with("fs__a_b_") && valid(&slash), "{slash}");
        for added in ["write file", "write/file", "a b", "a_b"] {
            let after = names(&[
                tool("write_file", None),
                tool("a/b", None),
                tool(added, None),
            ]);
            assert_eq!(after["write_file"], "fs__write_file", "{added}");
            assert_eq!(after["a/b"], slash, "{added}");
            assert_eq!(after.len(), 3, "{after:?}");
            assert!(after.values().all(|n| valid(n)));
        }
        // The same tool always gets the same name, whatever else is listed.
        assert_eq!(
            names(&[tool("write file", None)])["write file"],
            fit_name("fs__write file")
        );
    }

    #[test]
    fn a_crafted_clash_loses_to_the_unaltered_name_in_any_order() {
        // An upstream naming a tool exactly like another tool's fitted name.
        let crafted = fit_name("fs__a/b")["fs__".len()..].to_owned();
        let forward = names(&[tool("a/b", None), tool(&crafted, None)]);
        let backward = names(&[tool(&crafted, None), tool("a/b", None)]);
        assert_eq!(forward, backward);
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert_eq!(forward[&crafted], format!("fs__{crafted}"));
        let catalogue = Catalogue::build(&[UpstreamTools {
            bucket: "fs",
            tools: &[tool("plain", Some(true))],
            read_only_tools: None,
        }]);
        assert!(catalogue.get("fs__plain").unwrap().read_only);
    }

    #[test]
    fn read_only_tools_replace_annotations() {
        let tools = [
            tool("read_file", Some(false)),
            tool("write_file", Some(true)),
        ];
        let patterns = ["read_*".to_owned()];
        let catalogue = Catalogue::build(&[UpstreamTools {
            bucket: "fs",
            tools: &tools,
            read_only_tools: Some(&patterns),
        }]);
        assert!(catalogue.get("fs__read_file").unwrap().read_only);
        assert!(!catalogue.get("fs__write_file").unwrap().read_only);
        // Only the name changes.
        let def = &catalogue.get("fs__write_file").unwrap().definition;
        assert_eq!(def.annotations.as_ref().unwrap().read_only_hint, Some(true));
    }
}
