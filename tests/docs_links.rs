//! The repository stands alone: no documentation file points outside it.
//!
//! Scans `README.md`, every other Markdown file at the top level (`ARCHITECTURE.md`,
//! `BENCHMARKS.md`, …), every Markdown file under `docs/`, and `mcp-config.example.json`:
//!
//! - every Markdown link (inline, reference definition, HTML `href`/`src`) outside code is
//!   relative, stays inside the repository, names a file that exists, and, when it has a
//!   `#fragment` into a Markdown file, a heading that exists;
//! - no link or bare URL outside code leads to another site: the README and docs never link
//!   outside the repository;
//! - in code (spans, fenced blocks, the JSON example), URLs name only loopback hosts or the
//!   reserved example domains, and no relative path climbs out of the repository;
//! - nothing cites a specification the repository does not hold (`SPEC`, `SPEC.md`),
//!   and nothing names this machine's own paths (`/work/`, `/root/`) or a `file://` URL.
//!
//! A failure names the file and line of every problem.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files that must exist and be scanned, whatever else is found.
const REQUIRED: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "BENCHMARKS.md",
    "docs/tools.md",
    "docs/authorization.md",
    "docs/http.md",
    "docs/cli.md",
    "docs/gateway.md",
    "docs/backups-and-audit.md",
    "mcp-config.example.json",
];

/// Hosts a URL in an example may name: this machine, domains reserved for examples, or a
/// placeholder without a dot (`scheme://host`, `http://ADDR/mcp`), which names no site.
fn is_example_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "0.0.0.0")
        || (!host.contains('.') && !host.contains(':'))
        || ["example.com", "example.org", "example.net"]
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
        || [".example", ".test", ".invalid", ".localhost"]
            .iter()
            .any(|tld| host.ends_with(tld))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    file: String,
    line: usize,
    message: String,
}

/// One line of a Markdown file, split into prose and code (inline spans and fenced blocks).
struct Line<'a> {
    number: usize,
    /// Pieces outside code.
    prose: Vec<&'a str>,
    /// Pieces inside code.
    code: Vec<&'a str>,
}

fn split_markdown(text: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut fence: Option<&str> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                fence = Some(m);
                lines.push(Line {
                    number,
                    prose: vec![],
                    code: vec![raw],
                });
                continue;
            }
            (Some(open), Some(m)) if open == m => {
                fence = None;
                lines.push(Line {
                    number,
                    prose: vec![],
                    code: vec![raw],
                });
                continue;
            }
            (Some(_), _) => {
                lines.push(Line {
                    number,
                    prose: vec![],
                    code: vec![raw],
                });
                continue;
            }
            (None, None) => {}
        }
        // Inline code spans: the pieces between backticks alternate prose, code, prose…
        let mut prose = Vec::new();
        let mut code = Vec::new();
        for (i, piece) in raw.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push(piece);
            } else {
                code.push(piece);
            }
        }
        lines.push(Line {
            number,
            prose,
            code,
        });
    }
    lines
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor the headings of a Markdown text define.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&trimmed[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        anchors.insert(anchor);
    }
    anchors
}

/// `text` starts with a URL scheme (`http:`, `mailto:`, …); returns the scheme.
fn scheme(text: &str) -> Option<&str> {
    let end = text.find(':')?;
    let name = &text[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && name.len() > 1
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(name)
}

/// `base` joined with the relative `path`, without touching the file system; `None` when it
/// climbs above the repository root.
fn resolve(base: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for piece in path.split('/') {
        match piece {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other.to_owned()),
        }
    }
    Some(parts.iter().collect())
}

struct Checker<'a> {
    root: &'a Path,
    /// Anchors per Markdown file, read on first use.
    anchors: HashMap<PathBuf, Option<HashSet<String>>>,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn new(root: &'a Path) -> Self {
        Checker {
            root,
            anchors: HashMap::new(),
            problems: Vec::new(),
        }
    }

    fn report(&mut self, file: &str, line: usize, message: String) {
        let problem = Problem {
            file: file.to_owned(),
            line,
            message,
        };
        // A line can show the same target twice (as a link and as its code-span text).
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn anchors_of(&mut self, relative: &Path) -> Option<&HashSet<String>> {
        let root = self.root;
        self.anchors
            .entry(relative.to_path_buf())
            .or_insert_with(|| {
                fs::read_to_string(root.join(relative))
                    .ok()
                    .map(|t| anchors(&t))
            })
            .as_ref()
    }

    /// A link target written in Markdown prose in `file` (a path relative to the root).
    fn link(&mut self, file: &str, line: usize, target: &str, own_text: &str) {
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        if target.is_empty() {
            self.report(file, line, "empty link target".to_owned());
            return;
        }
        if let Some(s) = scheme(target) {
            self.report(
                file,
                line,
                format!(
                    "link to {target}: the documentation links only to files in the \
                     repository, never to {s}: URLs"
                ),
            );
            return;
        }
        if target.starts_with('/') || target.starts_with('~') || target.starts_with('\\') {
            self.report(
                file,
                line,
                format!("link to {target}: an absolute path names a file outside the repository"),
            );
            return;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (target, None),
        };
        let path = path.split('?').next().unwrap_or(path);
        let here = Path::new(file).parent().unwrap_or(Path::new(""));
        let resolved = if path.is_empty() {
            PathBuf::from(file)
        } else {
            match resolve(here, path) {
                Some(p) => p,
                None => {
                    self.report(
                        file,
                        line,
                        format!("link to {target} climbs out of the repository"),
                    );
                    return;
                }
            }
        };
        if matches!(
            resolved.components().next(),
            Some(Component::Normal(first)) if first == "target" || first == ".git"
        ) {
            self.report(
                file,
                line,
                format!("link to {target} points into build output, not the repository"),
            );
            return;
        }
        if !self.root.join(&resolved).exists() {
            self.report(
                file,
                line,
                format!(
                    "link to {target}: {} does not exist in the repository",
                    resolved.display()
                ),
            );
            return;
        }
        let Some(fragment) = fragment else { return };
        if resolved.extension().is_some_and(|e| e == "md") {
            let found = if path.is_empty() {
                anchors(own_text).contains(fragment)
            } else {
                self.anchors_of(&resolved)
                    .is_some_and(|a| a.contains(fragment))
            };
            if !found {
                self.report(
                    file,
                    line,
                    format!(
                        "link to {target}: {} has no heading with anchor #{fragment}",
                        resolved.display()
                    ),
                );
            }
        }
    }

    /// Text anywhere (prose or code): no private specification, no machine paths, no file URLs.
    fn anywhere(&mut self, file: &str, line: usize, text: &str) {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word == "SPEC" {
                self.report(
                    file,
                    line,
                    "cites SPEC, a document outside the repository: say it here, or link to \
                     docs/"
                        .to_owned(),
                );
                break;
            }
        }
        for machine in ["/work/", "/root/"] {
            if text.contains(machine) {
                self.report(
                    file,
                    line,
                    format!("names {machine}…, a path on the machine the docs were written on"),
                );
            }
        }
        if text.to_ascii_lowercase().contains("file://") {
            self.report(
                file,
                line,
                "a file:// URL points outside the repository".to_owned(),
            );
        }
    }

    /// Code: URLs only to example hosts; relative paths that stay inside the repository.
    fn code(&mut self, file: &str, line: usize, code: &str) {
        for url in urls(code) {
            let host = host_of(url);
            if !is_example_host(host) {
                self.report(
                    file,
                    line,
                    format!(
                        "{url}: examples may name only loopback hosts or example domains, \
                         never another site"
                    ),
                );
            }
        }
        let here = Path::new(file).parent().unwrap_or(Path::new(""));
        for token in code.split(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '(' | ')' | ',' | '=' | '[' | ']')
        }) {
            if token.starts_with("../") && resolve(here, token).is_none() {
                self.report(file, line, format!("{token} climbs out of the repository"));
            }
        }
    }

    /// Prose: every link, and no bare URL.
    fn prose(&mut self, file: &str, line: usize, prose: &str, own_text: &str) {
        let mut rest = prose;
        let mut bare = String::new();
        // Inline links and images: `](target)`.
        while let Some(start) = rest.find("](") {
            bare.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let mut depth = 0usize;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = i;
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let inside = &after[..end];
            // A title may follow the target: [x](target "title").
            let target = inside.split_whitespace().next().unwrap_or("");
            self.link(file, line, target, own_text);
            rest = after.get(end + 1..).unwrap_or("");
        }
        bare.push_str(rest);

        // Reference definitions: `[name]: target`.
        let trimmed = bare.trim_start();
        if trimmed.starts_with('[')
            && let Some(close) = trimmed.find("]:")
            && !trimmed[1..close].contains(']')
        {
            let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
            self.link(file, line, target, own_text);
            return;
        }

        // HTML attributes.
        for attribute in ["href=\"", "src=\""] {
            let mut rest = bare.as_str();
            while let Some(start) = rest.find(attribute) {
                let after = &rest[start + attribute.len()..];
                let end = after.find('"').unwrap_or(after.len());
                self.link(file, line, &after[..end], own_text);
                rest = &after[end..];
            }
        }

        // Bare URLs and autolinks, which renderers turn into links.
        for url in urls(&bare) {
            if !bare.contains(&format!("href=\"{url}")) && !bare.contains(&format!("src=\"{url}")) {
                self.report(
                    file,
                    line,
                    format!(
                        "{url}: the documentation links only to files in the repository \
                         (put examples in code)"
                    ),
                );
            }
        }
    }

    fn markdown(&mut self, file: &str, text: &str) {
        for line in split_markdown(text) {
            for piece in &line.prose {
                self.prose(file, line.number, piece, text);
                self.anywhere(file, line.number, piece);
            }
            for piece in &line.code {
                self.code(file, line.number, piece);
                self.anywhere(file, line.number, piece);
            }
        }
    }

    /// A non-Markdown file shown to users as an example: all of it is code.
    fn example(&mut self, file: &str, text: &str) {
        for (index, line) in text.lines().enumerate() {
            self.code(file, index + 1, line);
            self.anywhere(file, index + 1, line);
        }
    }
}

/// URLs with a scheme and `//` in `text` (`http://…`, `https://…`, `ftp://…`), without
/// trailing punctuation. `file://` is reported on its own.
fn urls(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("://") {
        let at = from + offset;
        let start = text[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let end = text[at..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']')
            })
            .map_or(text.len(), |i| at + i);
        let url = text[start..end].trim_end_matches(['.', ',', ';', ':']);
        if start < at && !text[start..at].eq_ignore_ascii_case("file") {
            found.push(url);
        }
        from = end.max(at + 3);
    }
    found
}

/// The host of `scheme://host[:port]/…` (user info and brackets kept out).
fn host_of(url: &str) -> &str {
    let after = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after.split(['/', '?', '#']).next().unwrap_or(after);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The Markdown files to scan, relative to the root: the top level's and everything under `docs/`.
fn markdown_files(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in fs::read_dir(root)
        .expect("read the repository root")
        .flatten()
    {
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "md") {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let mut stack = vec![PathBuf::from("docs")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let relative = dir.join(entry.file_name());
            let path = root.join(&relative);
            if path.is_dir() {
                stack.push(relative);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files.sort();
    files
}

fn check_repository(root: &Path) -> (Vec<String>, Vec<Problem>) {
    let mut checker = Checker::new(root);
    let mut scanned = Vec::new();
    for required in REQUIRED {
        if !root.join(required).is_file() {
            checker.report(
                required,
                0,
                "is missing (the documentation links to it)".to_owned(),
            );
        }
    }
    for file in markdown_files(root) {
        let text = fs::read_to_string(root.join(&file)).expect("read a Markdown file");
        checker.markdown(&file, &text);
        scanned.push(file);
    }
    let example = "mcp-config.example.json";
    if let Ok(text) = fs::read_to_string(root.join(example)) {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            checker.report(example, e.line(), format!("is not valid JSON: {e}"));
        }
        checker.example(example, &text);
        scanned.push(example.to_owned());
    }
    (scanned, checker.problems)
}

#[test]
fn no_file_in_the_repository_points_outside_it() {
    let root = repository();
    let (scanned, problems) = check_repository(&root);
    for required in REQUIRED {
        assert!(
            scanned.iter().any(|s| s == required),
            "{required} was not scanned"
        );
    }
    if !problems.is_empty() {
        let listing: Vec<String> = problems
            .iter()
            .map(|p| format!("  {}:{}: {}", p.file, p.line, p.message))
            .collect();
        panic!(
            "{} problem(s) in the documentation: every link must stay inside the repository\n{}",
            problems.len(),
            listing.join("\n")
        );
    }
}

/// The checker itself: each kind of problem is found, on the line where it is, and clean text
/// passes. Runs against a scratch repository so it does not depend on today's docs.
#[test]
fn the_checker_finds_every_kind_of_outside_reference() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("docs/deep")).unwrap();
    fs::write(
        root.join("docs/deep/page.md"),
        "# A page\n\n## Second part\n",
    )
    .unwrap();
    fs::write(root.join("README.md"), "# Read me\n").unwrap();
    fs::write(root.join("docs/clean.md"), CLEAN).unwrap();

    let mut checker = Checker::new(root);
    checker.markdown("docs/clean.md", CLEAN);
    assert_eq!(checker.problems, vec![], "clean text must pass");

    // Spelled in pieces, so that this file does not itself cite what it forbids.
    let bad = BAD.replace("@SPEC@", &["SP", "EC"].concat());
    let mut checker = Checker::new(root);
    checker.markdown("docs/bad.md", &bad);
    let lines: Vec<usize> = checker.problems.iter().map(|p| p.line).collect();
    for (line, what) in [
        (1, "relative link climbing out"),
        (2, "SPEC citation"),
        (3, "missing file"),
        (4, "https link"),
        (5, "bare URL"),
        (6, "absolute link"),
        (7, "missing anchor"),
        (8, "reference definition to another site"),
        (11, "URL to another site in a code block"),
        (12, "an example domain used as a prefix of another site"),
        (13, "relative path climbing out in code"),
        (14, "this machine's path"),
        (15, "file URL"),
        (17, "autolink"),
        (18, "missing anchor in this file"),
        (19, "HTML href to another site"),
    ] {
        assert!(
            lines.contains(&line),
            "line {line} ({what}) not reported; got {:#?}",
            checker.problems
        );
    }
    for quiet in [9, 10, 16, 20] {
        assert!(
            !lines.contains(&quiet),
            "line {quiet} wrongly reported: {:#?}",
            checker.problems
        );
    }
    let first = &checker.problems[0];
    assert_eq!((first.file.as_str(), first.line), ("docs/bad.md", 1));

    let mut checker = Checker::new(root);
    checker.example(
        "x.json",
        r#"{"url": "https://mcp.elsewhere.io/mcp", "ok": "http://127.0.0.1:8787/mcp"}"#,
    );
    assert_eq!(checker.problems.len(), 1, "{:#?}", checker.problems);
}

const CLEAN: &str = "\
# Clean

See [the page](deep/page.md), [its second part](deep/page.md#second-part),
[this heading](#clean) and [the read-me](../README.md \"title\").

```sh
curl http://127.0.0.1:8787/healthz
tokenwarden serve --allowed-origin https://app.example.com:443 --http 0.0.0.0:8787
```

Inline `http://localhost:6274`, `https://[::1]:8443` and `scheme://host:*` are examples.
";

const BAD: &str = "\
See [the contract](../../shared/@SPEC@.md).
As @SPEC@ §5 says.
A [missing](deep/nothing.md) file.
The [site](https://modelcontextprotocol.io/specification).
Visit https://github.com/somewhere for more.
An [absolute](/etc/passwd) link.
A [bad anchor](deep/page.md#no-such-part).
[ref]: https://example.org.evil.net/page
```
tokenwarden serve
curl https://api.elsewhere.io/v1
curl https://example.com.elsewhere.io/
cat ../../../outside.txt
ls /work/shared
open file:///etc/hosts
```
<https://autolink.elsewhere.io>
[here](#no-heading-like-this)
<a href=\"https://elsewhere.io\">x</a>
Nothing wrong here.
";

/// The invariants of ARCHITECTURE.md, numbered `N. **…**` under `## Invariants`, each with its
/// text (up to the next invariant or section).
fn invariants(text: &str) -> Vec<(String, usize, String)> {
    let start = text
        .find("\n## Invariants")
        .expect("ARCHITECTURE.md has ## Invariants");
    let section = &text[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let first_line = text[..start + 1].lines().count();
    let mut found: Vec<(String, usize, String)> = Vec::new();
    for (index, line) in section[..end].lines().enumerate() {
        let number: String = line.chars().take_while(char::is_ascii_digit).collect();
        if !number.is_empty() && line[number.len()..].starts_with(". **") {
            found.push((number, first_line + index + 1, String::new()));
        }
        if let Some((_, _, body)) = found.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    found
}

/// The tests an invariant's text names: `tests/a.rs::f`, `src/b.rs::module::f`, `::f` (in the
/// file named last), or a whole file (`src/gateway/fair.rs`). Each is (file, function).
fn named_tests(body: &str) -> Vec<(String, Option<String>)> {
    let mut named = Vec::new();
    let mut file: Option<String> = None;
    for span in body.split('`').skip(1).step_by(2) {
        let (path, rest) = match span.split_once("::") {
            Some((path, rest)) => (path, Some(rest)),
            None => (span, None),
        };
        let is_file = (path.starts_with("tests/") || path.starts_with("src/"))
            && path.ends_with(".rs")
            && !path.contains(' ');
        if is_file {
            file = Some(path.to_owned());
        } else if !(path.is_empty() && rest.is_some()) {
            continue; // some other code span: a type, a flag
        }
        let Some(file) = &file else { continue };
        let function = rest.map(|r| {
            let last = r.rsplit("::").next().unwrap_or(r);
            last.trim_end_matches("()").to_owned()
        });
        let function = function
            .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if is_file && rest.is_some() && function.is_none() {
            continue; // `src/x.rs::Type::method`-like prose, not a test
        }
        named.push((file.clone(), function));
    }
    named
}

/// Problems with the invariants in `text`, files and functions looked up under `root`.
fn check_invariants(root: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let list = invariants(text);
    if list.is_empty() {
        problems.push("ARCHITECTURE.md: no invariants found under ## Invariants".to_owned());
    }
    for (number, line, body) in list {
        let named = named_tests(&body);
        if named.is_empty() {
            problems.push(format!(
                "ARCHITECTURE.md:{line}: invariant {number} names no test"
            ));
        }
        for (file, function) in named {
            if let Some((prefix, suffix)) = file.split_once('*') {
                // A glob (`tests/fault_*.rs`): some file must match it.
                let (folder, prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                let matches = fs::read_dir(root.join(folder))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.starts_with(prefix) && name.ends_with(suffix)
                    });
                if !matches {
                    problems.push(format!(
                        "ARCHITECTURE.md:{line}: invariant {number} names {file}, which matches no file"
                    ));
                }
                continue;
            }
            let Ok(source) = fs::read_to_string(root.join(&file)) else {
                problems.push(format!(
                    "ARCHITECTURE.md:{line}: invariant {number} names {file}, which does not exist"
                ));
                continue;
            };
            if let Some(function) = function
                && !source.contains(&format!("fn {function}("))
                && !source.contains(&format!("fn {function}<"))
            {
                problems.push(format!(
                    "ARCHITECTURE.md:{line}: invariant {number} names {file}::{function}, \
                     which is not a function there"
                ));
            }
        }
    }
    problems
}

#[test]
fn every_invariant_names_tests_that_exist() {
    let root = repository();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let problems = check_invariants(&root, &text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_invariant_checker_finds_an_invariant_without_a_test_and_a_missing_test() {
    let root = repository();
    let text = "# A\n\n## Invariants\n\n\
        1. **Named.** Tests: `tests/docs_links.rs::every_invariant_names_tests_that_exist`.\n\
        2. **Unproven.** Nothing names a test here.\n\
        3. **Stale.** Tests: `tests/docs_links.rs::a_test_that_was_renamed`,\n   \
        `::every_invariant_names_tests_that_exist`, `tests/gone.rs`.\n\n## Next\n";
    let problems = check_invariants(&root, text);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("invariant 2 names no test"),
        "{problems:#?}"
    );
    assert!(problems[1].contains("tests/docs_links.rs::a_test_that_was_renamed"));
    assert!(problems[2].contains("tests/gone.rs, which does not exist"));
}

/// The README's documentation table lists every page under `docs/`, and docs/cli.md's table
/// of commands lists every command `tokenwarden --help` shows.
#[test]
fn the_documentation_tables_are_complete() {
    let root = repository();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let table: String = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Documentation"))
        .take_while(|l| !l.starts_with("## Install"))
        .collect::<Vec<_>>()
        .join("\n");
    for entry in fs::read_dir(root.join("docs")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && name != "README.md" {
            assert!(
                table.contains(&format!("](docs/{name})")),
                "README's documentation table lists docs/{name}"
            );
        }
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let cli = fs::read_to_string(root.join("docs/cli.md")).unwrap();
    let commands = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help");
    let mut seen = 0;
    for command in commands {
        seen += 1;
        assert!(
            cli.contains(&format!("| [`{command}")) || cli.contains(&format!("[`{command}`]")),
            "docs/cli.md's table of commands lists {command}"
        );
    }
    assert!(seen >= 8, "commands found in --help: {help}");
}
