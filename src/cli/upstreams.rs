//! `tokenwarden upstreams`: connect once to each upstream of an upstreams file and show what
//! the gateway would expose (SPEC §10). Exits non-zero if any upstream is unavailable.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use super::output::Out;
use super::{Cli, CliError};
use crate::gateway::catalogue::{Catalogue, UpstreamTools};
use crate::gateway::{Connection, config};

#[derive(Debug, Args)]
pub struct UpstreamsArgs {
    /// The upstreams file (the mcpServers shape of claude_desktop_config.json or .mcp.json).
    #[arg(long, value_name = "FILE", env = "TOKENWARDEN_UPSTREAMS")]
    pub upstreams: PathBuf,
}

pub async fn run(cli: &Cli, args: &UpstreamsArgs) -> Result<(), CliError> {
    let config = config::load(&args.upstreams).map_err(CliError::new)?;
    // Every upstream at once: one slow upstream does not hold up the others.
    let mut probes = tokio::task::JoinSet::new();
    for upstream in config.upstreams.values().cloned() {
        probes.spawn(async move {
            let tools = Connection::probe(&upstream).await;
            (upstream, tools)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = probes.join_next().await {
        results.push(done.map_err(|e| CliError::new(format!("probe failed: {e}")))?);
    }
    results.sort_by(|a, b| a.0.bucket.cmp(&b.0.bucket));

    let empty = Vec::new();
    let lists: Vec<UpstreamTools<'_>> = results
        .iter()
        .map(|(upstream, tools)| UpstreamTools {
            bucket: &upstream.bucket,
            tools: tools.as_ref().unwrap_or(&empty),
            read_only_tools: upstream.read_only_tools.as_deref(),
        })
        .collect();
    let catalogue = Catalogue::build(&lists);

    let mut out = Out::new();
    let mut unavailable = Vec::new();
    for (upstream, tools) in &results {
        let exposed: Vec<Value> = catalogue
            .in_bucket(&upstream.bucket)
            .map(|t| json!({"name": t.name, "upstream_name": t.upstream_name, "read_only": t.read_only}))
            .collect();
        let mut entry = json!({
            "bucket": upstream.bucket,
            "transport": upstream.transport.kind(),
            "status": if tools.is_ok() { "connected" } else { "unavailable" },
            "tools": exposed,
        });
        if let Err(error) = tools {
            entry["error"] = json!(error);
            unavailable.push(upstream.bucket.clone());
        }
        if cli.json {
            out.json(&entry)?;
            continue;
        }
        match tools {
            Ok(_) => out.line(format!(
                "{}  connected ({}, {} tools)",
                upstream.bucket,
                upstream.transport.kind(),
                exposed.len()
            ))?,
            Err(error) => out.line(format!(
                "{}  unavailable ({}): {}",
                upstream.bucket,
                upstream.transport.kind(),
                crate::secret::redact_secrets(error)
            ))?,
        }
        let width = exposed
            .iter()
            .filter_map(|t| t["name"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(0);
        for tool in &exposed {
            let flag = if tool["read_only"] == json!(true) {
                "read-only"
            } else {
                ""
            };
            let line = format!(
                "  {:width$}  {flag}",
                tool["name"].as_str().unwrap_or_default()
            );
            out.line(line.trim_end())?;
        }
    }
    if unavailable.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "{} of {} upstreams unavailable: {}",
            unavailable.len(),
            results.len(),
            unavailable.join(", ")
        )))
    }
}
