//! Helpers for the core integration tests: a real sled store in a temporary directory, driven
//! through `tokenwarden::service::Service` exactly as the front ends drive it.

#![allow(dead_code)]

use tempfile::TempDir;
use tokenwarden::error::{Error, ErrorCode};
use tokenwarden::record::{EffectiveStatus, Status};
use tokenwarden::secret::TokenId;
use tokenwarden::service::requests::{CreateToken, Issued, TokenRef, TokenView};
use tokenwarden::service::{Caller, Service, ServiceConfig};

/// A service over a fresh store. The directory lives as long as the fixture.
pub struct Fixture {
    pub dir: TempDir,
    pub service: Service,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config(ServiceConfig::default())
    }

    pub fn with_config(config: ServiceConfig) -> Fixture {
        let dir = TempDir::new().expect("temporary directory");
        let service = Service::open(dir.path(), config).expect("the store opens");
        Fixture { dir, service }
    }

    /// Shuts the service down, drops it and opens the same directory again, same config.
    pub fn reopen(self) -> Fixture {
        let config = self.service.config().clone();
        self.reopen_with(config)
    }

    pub fn reopen_with(self, config: ServiceConfig) -> Fixture {
        let Fixture { dir, service } = self;
        service.shutdown().expect("shutdown flushes");
        drop(service);
        // sled's flusher thread lets go of the file lock a moment after the last handle is
        // dropped: wait for it, within bounds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let service = loop {
            match Service::open(dir.path(), config.clone()) {
                Err(tokenwarden::store::StoreError::Locked(_))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.expect("the store reopens"),
            }
        };
        Fixture { dir, service }
    }
}

/// A configuration whose in-memory cache holds only a couple of records and hashes, so that
/// nearly every decision reads the store and the cache is evicted constantly.
pub fn tiny_cache() -> ServiceConfig {
    let mut config = ServiceConfig::default();
    config.store.hot_records = 2;
    config
}

pub fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

pub fn caller(issued: &Issued) -> Caller {
    Caller::Token(issued.record.id.clone())
}

pub fn id_of(issued: &Issued) -> String {
    issued.record.id.to_string()
}

pub fn token_ref(id: &TokenId) -> TokenRef {
    TokenRef { id: id.to_string() }
}

/// Creates a token and fails the test with the service's message if that is refused.
pub fn create(service: &Service, by: &Caller, req: CreateToken) -> Issued {
    let name = req.name.clone();
    service
        .create_token(by, req)
        .unwrap_or_else(|e| panic!("creating {name:?} failed: {e}"))
}

/// A root token created by the owner with the given tools and buckets (None: all).
pub fn root(service: &Service, name: &str, tools: &[&str], buckets: &[&str]) -> Issued {
    create(
        service,
        &Caller::Owner,
        CreateToken {
            name: name.to_owned(),
            tools: (!tools.is_empty()).then(|| strings(tools).unwrap()),
            buckets: (!buckets.is_empty()).then(|| strings(buckets).unwrap()),
            parent: Some("none".to_owned()),
            ..CreateToken::default()
        },
    )
}

/// A child minted by `parent` itself (a token caller, `parent: self`), inheriting its scope.
pub fn child_of(service: &Service, parent: &Issued, name: &str) -> Issued {
    create(
        service,
        &caller(parent),
        CreateToken {
            name: name.to_owned(),
            ..CreateToken::default()
        },
    )
}

/// The token as the owner sees it through `get_token`.
pub fn view(service: &Service, id: &TokenId) -> TokenView {
    service
        .get_token(&Caller::Owner, token_ref(id))
        .unwrap_or_else(|e| panic!("get_token {id} failed: {e}"))
}

pub fn effective(service: &Service, id: &TokenId) -> EffectiveStatus {
    view(service, id).effective_status
}

pub fn own_status(service: &Service, id: &TokenId) -> Status {
    view(service, id).status
}

pub fn tools_of(view: &TokenView) -> Vec<String> {
    view.tools.iter().map(ToString::to_string).collect()
}

/// Asserts `result` failed with `code`, returning the error for further checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Error>, code: ErrorCode) -> Error {
    match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "unexpected error: {e}");
            e
        }
    }
}

/// The fields a `scope_exceeds_parent` message names ("… exceeds parent tok_… in: a, b").
#[track_caller]
pub fn exceeding_fields(e: &Error) -> Vec<String> {
    assert_eq!(
        e.code,
        ErrorCode::ScopeExceedsParent,
        "unexpected error: {e}"
    );
    let (_, fields) = e
        .message
        .rsplit_once(" in: ")
        .unwrap_or_else(|| panic!("message names no fields: {}", e.message));
    let mut fields: Vec<String> = fields.split(", ").map(str::to_owned).collect();
    fields.sort();
    fields
}
