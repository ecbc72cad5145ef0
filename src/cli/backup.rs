//! `tokenwarden export` and `import`: backup and restore as JSON lines (the format is
//! described in [`crate::service::Service::export`]). A backup holds secret hashes, never
//! secrets, yet whoever holds one can restore working tokens: it is written readable by its
//! owner only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use super::output::Out;
use super::owner::Owner;
use super::{Cli, CliError};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write the backup to FILE (created readable by you only, and only once complete)
    /// instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Read the backup from FILE instead of standard input.
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Import into a store that is not empty: add only the tokens it lacks (each must still fit
    /// within its parent as the store holds it); the backup's audit events are not added.
    #[arg(long)]
    pub merge: bool,
    /// Refuse a backup holding a token deeper than this (a root token is depth 0); use the
    /// server's --max-depth.
    #[arg(long, default_value_t = 8)]
    pub max_depth: u8,
}

pub fn export(cli: &Cli, args: &ExportArgs) -> Result<(), CliError> {
    let owner = Owner::open(cli, super::Access::Read, super::service_config(cli))?;
    let written = match &args.output {
        None => {
            let mut stdout = io::stdout().lock();
            owner.export(&mut stdout)
        }
        Some(path) => export_to_file(&owner, path),
    };
    owner.close()?;
    let entries = written?;
    if let Some(path) = &args.output {
        let mut out = Out::new();
        if cli.json {
            out.json(&json!({ "entries": entries, "path": path }))?;
        } else {
            out.line(format!("exported {entries} entries to {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes to a temporary file beside `path` and renames it into place once complete, so a
/// failed export never leaves a truncated backup under the chosen name.
fn export_to_file(owner: &Owner, path: &Path) -> Result<u64, CliError> {
    let io_error =
        |what: &str, e: io::Error| CliError::new(format!("cannot {what} {}: {e}", path.display()));
    let partial = path.with_extension("partial");
    let file = private_file(&partial).map_err(|e| io_error("create", e))?;
    let mut writer = BufWriter::new(file);
    let entries = owner.export(&mut writer).inspect_err(|_| {
        let _ = fs::remove_file(&partial);
    })?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .and_then(|()| fs::rename(&partial, path))
        .map_err(|e| {
            let _ = fs::remove_file(&partial);
            io_error("write", e)
        })?;
    Ok(entries)
}

/// A new file readable by its owner only. A leftover file of that name (say, from an export
/// that was killed) is removed first, so its permissions never carry over.
fn private_file(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

pub fn import(cli: &Cli, args: &ImportArgs) -> Result<(), CliError> {
    // Read the file before opening the store, so a missing file changes nothing.
    let mut input: Box<dyn io::BufRead> = match &args.input {
        None => Box::new(io::stdin().lock()),
        Some(path) => {
            Box::new(BufReader::new(File::open(path).map_err(|e| {
                CliError::new(format!("cannot read {}: {e}", path.display()))
            })?))
        }
    };
    let dir = super::data_dir(cli).map_err(CliError::new)?;
    let mut config = super::service_config(cli);
    config.max_depth = args.max_depth;
    // A running server would keep serving what the import replaces underneath it.
    let service = match super::open_store(&dir, config)? {
        super::Opened::Store(service) => *service,
        super::Opened::Held => {
            return Err(super::held(
                &dir,
                "stop the server before importing (import needs the database to itself)",
            ));
        }
    };
    let imported = service.import(&mut input, args.merge);
    super::close_service(service)?;
    // A refused file is a failed command (exit 1), not a malformed flag value.
    let imported = imported.map_err(|e| CliError {
        exit_code: 1,
        ..CliError::from(e)
    })?;
    let mut out = Out::new();
    if cli.json {
        out.json(&json!(imported))
    } else {
        if imported.orphan_counters_dropped > 0 {
            eprintln!(
                "warning: dropped {} usage counters of tokens that are not in the backup \
                 (left by a deletion in an older version)",
                imported.orphan_counters_dropped
            );
        }
        out.line(format!("imported {} entries", imported.entries_written))
    }
}
