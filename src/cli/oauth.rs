//! `tokenwarden oauth …`: the OAuth clients and grants of a store, as the owner, and removing a
//! client (its grants end and their access tokens are revoked through the service).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::admin_socket::{Command, Request};
use super::output::{self, Out};
use super::owner::Owner;
use super::{Cli, CliError};
use crate::service::requests::{RevokeToken, TokenRef};
use crate::service::{Caller, Service};
use crate::store::oauth::OAuthStore;

#[derive(Debug, Args)]
pub struct OAuthArgs {
    #[command(subcommand)]
    pub command: OAuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum OAuthCommand {
    /// List the registered OAuth clients.
    Clients,
    /// List the OAuth grants: which client, approved by which token, its current access token.
    Grants,
    /// Remove a client: its grants end and their access tokens are revoked.
    ///
    /// Example: tokenwarden oauth remove-client twc_Vx3k9QbT2mZ8LwYp5RsNa4
    RemoveClient {
        /// The client id (`twc_…`), as `oauth clients` shows it.
        client_id: String,
    },
}

const CLIENT_COLUMNS: [(&str, &str); 4] = [
    ("CLIENT_ID", "client_id"),
    ("NAME", "client_name"),
    ("CREATED", "created_at"),
    ("REDIRECT_URIS", "redirect_uris"),
];

const GRANT_COLUMNS: [(&str, &str); 6] = [
    ("GRANT_ID", "grant_id"),
    ("CLIENT", "client_name"),
    ("APPROVER", "approver"),
    ("ACCESS_TOKEN", "access_token"),
    ("STATUS", "access_token_status"),
    ("REFRESH_EXPIRES", "refresh_expires_at"),
];

fn store_error(e: crate::store::StoreError) -> CliError {
    CliError::store(e.to_string())
}

pub fn run(cli: &Cli, args: &OAuthArgs) -> Result<(), CliError> {
    let access = match args.command {
        OAuthCommand::RemoveClient { .. } => super::Access::Write,
        _ => super::Access::Read,
    };
    let (key, request) = match &args.command {
        OAuthCommand::Clients => (
            "clients",
            Request::command(Command::OauthClients, json!({})),
        ),
        OAuthCommand::Grants => ("grants", Request::command(Command::OauthGrants, json!({}))),
        OAuthCommand::RemoveClient { client_id } => (
            "removed",
            Request::command(
                Command::OauthRemoveClient,
                json!({ "client_id": client_id }),
            ),
        ),
    };
    let owner = Owner::open(cli, access, super::service_config(cli))?;
    let result = owner.request(request);
    owner.close()?;
    let value = result?;
    let mut out = Out::new();
    if cli.json {
        return out.json(&value);
    }
    match key {
        "clients" | "grants" => {
            let rows = value[key].as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                return out.line(format!("no OAuth {key}"));
            }
            let columns: &[(&str, &str)] = if key == "clients" {
                &CLIENT_COLUMNS
            } else {
                &GRANT_COLUMNS
            };
            out.lines(&output::table(columns, &rows))
        }
        _ => out.fields(&value),
    }
}

fn oauth_store(service: &Service) -> Result<OAuthStore, CliError> {
    service.store().oauth().map_err(store_error)
}

/// `{"clients": [...]}`: every registered client.
pub fn clients(service: &Service) -> Result<Value, CliError> {
    let clients = oauth_store(service)?.clients().map_err(store_error)?;
    Ok(json!({ "clients": clients }))
}

/// `{"grants": [...]}`: every grant, with its client's name and its access token's status.
pub fn grants(service: &Service) -> Result<Value, CliError> {
    let store = oauth_store(service)?;
    let names: std::collections::HashMap<String, String> = store
        .clients()
        .map_err(store_error)?
        .into_iter()
        .map(|c| (c.client_id, c.client_name))
        .collect();
    let rows: Vec<Value> = store
        .grants()
        .map_err(store_error)?
        .into_iter()
        .map(|g| {
            let status = service
                .get_token(
                    &Caller::Owner,
                    TokenRef {
                        id: g.access_token.to_string(),
                    },
                )
                .map(|view| json!(view.effective_status))
                .unwrap_or(json!("deleted"));
            json!({
                "grant_id": g.grant_id,
                "client_id": g.client_id,
                "client_name": names.get(&g.client_id),
                "approver": g.approver,
                "access_token": g.access_token,
                "access_token_status": status,
                "buckets": g.scope.buckets,
                "tools": g.scope.tools,
                "read_only": g.scope.read_only,
                "lifetime_seconds": g.scope.lifetime_seconds,
                "created_at": g.created_at,
                "refreshed_at": g.refreshed_at,
                "refresh_expires_at": g.refresh_expires_at,
            })
        })
        .collect();
    Ok(json!({ "grants": rows }))
}

/// Ends a client's grants, revokes their access tokens and removes the client.
pub fn remove_client(service: &Service, client_id: &str) -> Result<Value, CliError> {
    let store = oauth_store(service)?;
    let Some(client) = store.client(client_id).map_err(store_error)? else {
        return Err(CliError::from(crate::error::Error::not_found(format!(
            "no OAuth client {}",
            crate::secret::truncate_for_message(client_id)
        ))));
    };
    // Tokens first: should this stop half way, the client still lists what is left.
    let grants: Vec<_> = store
        .grants()
        .map_err(store_error)?
        .into_iter()
        .filter(|g| g.client_id == client.client_id)
        .collect();
    let mut revoked = Vec::new();
    for grant in &grants {
        let outcome = service.revoke_token(
            &Caller::Owner,
            RevokeToken {
                id: grant.access_token.to_string(),
                include_minted: None,
            },
        );
        match outcome {
            Ok(_) => revoked.push(grant.access_token.clone()),
            Err(e) if e.code == crate::error::ErrorCode::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    store
        .remove_client(&client.client_id)
        .map_err(store_error)?;
    service.record_event(
        &Caller::Owner,
        "oauth_revoke",
        None,
        json!({
            "client_id": client.client_id,
            "reason": "client removed",
            "grants_ended": grants.len(),
            "tokens_revoked": revoked,
        }),
    )?;
    Ok(json!({
        "client_id": client.client_id,
        "client_name": client.client_name,
        "grants_ended": grants.len(),
        "tokens_revoked": revoked,
    }))
}
