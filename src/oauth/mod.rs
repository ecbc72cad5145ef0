//! OAuth 2.1 authorization server (SPEC §11): how connectors that cannot send a static header
//! (claude.ai, Claude Desktop, `mcp-remote`) get a token.
//!
//! - `metadata`: the RFC 9728 and RFC 8414 documents, served without a token.
//! - `register`: dynamic client registration (RFC 7591), bounded in count and rate.
//! - `cimd`: client metadata documents (a `client_id` that is an https URL), fetched behind
//!   request forgery guards.
//! - `authorize` + `consent`: the consent page, where a person pastes an approver token and
//!   narrows what the connector gets; approval yields a single-use code.
//! - `token`: code and refresh exchanges, and revocation (RFC 7009).
//! - `exchange`: RFC 8693 token exchange, a `create_token` call by the subject token.
//! - `introspect`: RFC 7662 introspection for services holding a token that may verify.
//! - `pending`: the bounded, expiring in-memory maps (pending consents, codes).
//!
//! The access token a connector receives is the secret of an ordinary tokenwarden token, a
//! child of the approver minted through `Service::create_token` with the approver as the
//! caller, at code exchange (and again at each refresh). So attenuation, depth and children
//! limits, denials, standing at commit and the audit log hold for it, and this module holds
//! no rule of its own. Clients and grants live in the store's `oauth` tree.

// Handlers answer early with a ready `Response` as the error of their helpers; it is built
// once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod authorize;
mod cimd;
mod consent;
mod console_consent;
mod exchange;
mod introspect;
mod metadata;
mod pending;
mod register;
mod token;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secret::TokenId;
use crate::service::Service;
use crate::store::oauth::OAuthStore;
use pending::{Consents, Expiring};

pub use cimd::CimdTesting;
pub use console_consent::ConsoleLink;
pub use register::RegistrationLimits;

/// How long a consent page stays usable.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// How long an authorization code may wait for its exchange (OAuth 2.1: short).
const CODE_TTL: Duration = Duration::from_secs(60);
/// Most pending consent requests held at once (anyone can open one; about a kilobyte each).
const MAX_PENDING: usize = 10_000;
/// Most pending consent requests of one peer address (an IPv6 /64).
const PENDING_SHARE: usize = 100;
/// Consent pages opened per minute by one peer address (an IPv6 /64), and by all together.
const CONSENT_PAGES_PER_PEER_MINUTE: u32 = 60;
const CONSENT_PAGES_PER_MINUTE: u32 = 6_000;
/// Most authorization codes held at once.
const MAX_CODES: usize = 1_000;
/// Request bodies of the token, revocation and consent endpoints.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// How long a refresh token lives unused (never past the approver's expiry).
const REFRESH_LIFETIME_SECONDS: u64 = 30 * 86_400;

/// What `serve` tells the authorization server.
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    /// The server as clients reach it, without a trailing slash: `https://tw.example.com`.
    pub public_url: String,
    /// Default lifetime of an access token in seconds (never past the approver's expiry).
    pub token_lifetime_seconds: u64,
    pub registration: RegistrationLimits,
    /// Client metadata documents: what tests may loosen (nothing in production).
    pub cimd: CimdTesting,
}

impl Default for OAuthConfig {
    /// What `serve` overrides: only in-process users (the guard benchmark) keep it.
    fn default() -> Self {
        OAuthConfig {
            public_url: "http://127.0.0.1:8787".to_owned(),
            token_lifetime_seconds: 3_600,
            registration: RegistrationLimits::default(),
            cimd: CimdTesting::default(),
        }
    }
}

impl OAuthConfig {
    /// Checks and normalises `--public-url`: http or https, a host, no query or fragment;
    /// the trailing slash is trimmed.
    pub fn public_url(value: &str) -> Result<String, String> {
        let bad = |why: &str| format!("invalid --public-url {value:?}: {why}");
        let url = url::Url::parse(value).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("it must start with https:// (or http://)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it must name a host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("it may not carry a query, a fragment or credentials"));
        }
        if !url.path().trim_end_matches('/').is_empty() {
            // The endpoints are served at the root (`/mcp`, `/oauth/…`, `/.well-known/…`).
            return Err(bad(
                "it may not have a path: the server is served at the root of its URL",
            ));
        }
        Ok(value.trim_end_matches('/').to_owned())
    }

    /// The protected resource: MCP at `/mcp`.
    pub fn resource(&self) -> String {
        format!("{}/mcp", self.public_url)
    }

    /// Where the protected resource metadata lives (every 401 names it).
    pub fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource", self.public_url)
    }

    /// The public URL's origin (`scheme://host[:port]`), which the consent form posts from.
    pub fn origin(&self) -> String {
        url::Url::parse(&self.public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }

    /// The public URL's host name, which requests may carry as `Host`.
    pub fn host(&self) -> Option<String> {
        url::Url::parse(&self.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    }
}

/// The authorization server's state: the service it mints through, its store, and the
/// in-memory maps, each bounded.
pub struct OAuth {
    service: Arc<Service>,
    store: OAuthStore,
    config: OAuthConfig,
    pending: Mutex<Consents<authorize::PendingRequest>>,
    consent_pages: Mutex<register::PeerRate>,
    codes: Mutex<Expiring<token::CodeState>>,
    registrations: Mutex<register::PeerRate>,
    /// Client metadata documents: fetched, checked, cached.
    documents: cimd::Documents,
    /// Introspection requests whose caller did not authenticate, per address.
    refused_introspectors: Mutex<register::PeerRate>,
    /// Serialises every change to grants (exchange, refresh, revocation), so a refresh token
    /// or a code is spent exactly once.
    grants: Mutex<()>,
    /// The console's sessions, for approval as a signed-in person (`console_consent`).
    console: Option<ConsoleLink>,
}

impl OAuth {
    pub fn new(service: Arc<Service>, config: OAuthConfig) -> Result<OAuth, String> {
        let store = service
            .store()
            .oauth()
            .map_err(|e| format!("cannot open the OAuth store: {e}"))?;
        let documents = cimd::Documents::new(&config.cimd)?;
        Ok(OAuth {
            service,
            store,
            documents,
            registrations: Mutex::new(register::PeerRate::registrations(config.registration)),
            consent_pages: Mutex::new(register::PeerRate::new(
                CONSENT_PAGES_PER_MINUTE,
                CONSENT_PAGES_PER_PEER_MINUTE,
            )),
            refused_introspectors: Mutex::new(register::PeerRate::new(
                u32::MAX,
                introspect::REFUSED_CALLERS_PER_PEER_MINUTE,
            )),
            config,
            pending: Mutex::new(Consents::new(PENDING_TTL, MAX_PENDING, PENDING_SHARE)),
            codes: Mutex::new(Expiring::new(CODE_TTL, MAX_CODES)),
            grants: Mutex::new(()),
            console: None,
        })
    }

    /// Lets the consent page approve as the browser's console session.
    pub fn with_console(mut self, console: ConsoleLink) -> OAuth {
        self.console = Some(console);
        self
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Whether `current` is the current access token of the grant that issued `earlier`
    /// before it: a session opened with `earlier` may carry on with `current` after a refresh.
    /// Decided from the grant's own record of what it issued, never from token metadata
    /// (which anyone managing the token can edit).
    pub fn succeeds(&self, earlier: &TokenId, current: &TokenId) -> bool {
        match self.store.grant_by_access_token(current) {
            Ok(Some(grant)) => grant.previous.contains(earlier),
            Ok(None) => false,
            Err(e) => {
                tracing::error!("reading OAuth grants failed: {e}");
                false
            }
        }
    }
}

/// Locks a mutex, surviving a panic elsewhere (the data are plain maps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The OAuth routes, served without a token: metadata, registration, consent, token,
/// revocation.
pub fn routes(oauth: Arc<OAuth>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route("/oauth/register", post(register::register))
        .route(
            "/oauth/authorize",
            get(authorize::show).post(authorize::decide),
        )
        .route("/oauth/authorize/console", post(console_consent::approve))
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(token::revoke))
        .route("/oauth/introspect", post(introspect::introspect))
        .with_state(oauth)
}

/// `bytes` random bytes, base64url without padding: ids, codes, CSRF tokens, refresh tokens.
fn random_string(bytes: usize) -> String {
    use rand::TryRng;
    let mut buf = vec![0u8; bytes];
    rand::rngs::SysRng
        .try_fill_bytes(&mut buf)
        .expect("the operating system's random source works");
    URL_SAFE_NO_PAD.encode(buf)
}

/// Reads a request body of at most `limit` bytes (the shared body reading of `http`): 413 with
/// an OAuth error body, or 408.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    crate::http::read_body(body, limit)
        .await
        .map_err(|fault| match fault {
            crate::http::BodyFault::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({
                    "error": "invalid_request",
                    "error_description": format!("the request body is limited to {limit} bytes"),
                })
                .to_string(),
            )
                .into_response(),
            crate::http::BodyFault::Late => crate::http::body_too_late(),
        })
}

/// A JSON answer that no cache may keep (tokens, errors of the token endpoint).
fn json_no_store(status: StatusCode, value: serde_json::Value) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An RFC 6749 §5.2 error (also used by registration, RFC 7591 §3.2.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_no_store(
        status,
        serde_json::json!({ "error": error, "error_description": description }),
    )
}

/// The client address of a request (for the approver's `allowed_ips`).
fn client_ip(peer: SocketAddr) -> std::net::IpAddr {
    crate::rules::cidr::canonical_ip(peer.ip())
}

/// Runs blocking service work (sled, fsync) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
