//! What the server observes about its use (SPEC §14): one [`Access`] per `tools/call` (its own
//! tools, REST endpoints, forwarded gateway tools) and per refused request of a known token,
//! handed to every [`AccessSink`] registered at start (the access log, the metrics).
//!
//! Recording never waits: sinks take the event and do their work elsewhere (the access log
//! writes behind in batches). With no sink registered, recording costs one atomic load.
//!
//! The observer also holds the [`Tracer`] when `serve --otlp-endpoint` turns traces on
//! (`crate::trace`); with none, no span is ever built.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::secret::TokenId;
use crate::timestamp::Timestamp;
use crate::trace::Tracer;

/// How a call or request ended: `ok`, or the error code it was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error code of `crate::error::ErrorCode`, or `upstream_error` (the upstream answered
    /// with a JSON-RPC error), `unauthorized` (the token's secret no longer authenticates:
    /// rotated out, paused, revoked, expired, wrong address) or `too_many_in_flight`.
    Error(&'static str),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(code) => code,
        }
    }
}

/// One tools/call, or one refused request of a known token. Never arguments, results or
/// secrets. It borrows what the call already holds: recording one allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub at: Timestamp,
    /// The calling token; `None` for the owner (stdio without a token, the admin socket).
    pub token: Option<&'a TokenId>,
    /// The root of the calling token's chain, when the caller already knows it (the access
    /// log's writer finds it otherwise).
    pub lineage: Option<&'a TokenId>,
    /// The tool called (gateway tools by their exposed name, `bucket__tool`); `None` for a
    /// request refused before a tool was known.
    pub tool: Option<&'a str>,
    /// The gateway bucket of a forwarded call.
    pub bucket: Option<&'a str>,
    pub outcome: Outcome,
    pub duration: Duration,
    /// For a forwarded call the upstream answered: its result's `isError`.
    pub upstream_is_error: Option<bool>,
    /// Where the call came in.
    pub front: Front,
}

/// The front end a call came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Mcp,
    Rest,
}

impl Front {
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Mcp => "mcp",
            Front::Rest => "rest",
        }
    }
}

/// Why a request without a usable token was refused at the front door. No token id goes with
/// it: there is none (or none worth naming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`, or a secret of the wrong shape.
    Malformed,
    /// A well-formed secret that no token has.
    Unknown,
    /// The store could not be read.
    Unavailable,
}

impl Unauthenticated {
    pub fn as_str(self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing",
            Unauthenticated::Malformed => "malformed",
            Unauthenticated::Unknown => "unknown",
            Unauthenticated::Unavailable => "unavailable",
        }
    }
}

/// Receives every [`Access`]; must not block. The two counts have empty defaults: the access
/// log records calls, the metrics count requests too.
pub trait AccessSink: Send + Sync {
    fn record(&self, access: &Access<'_>);

    /// A request that authenticated and was let in (the HTTP guard, the REST check).
    fn admitted(&self, _front: Front) {}

    /// A request refused for want of a usable token.
    fn unauthenticated(&self, _reason: Unauthenticated, _front: Front) {}
}

/// The sinks of one server, set once at start.
#[derive(Default)]
pub struct Observer {
    sinks: OnceLock<Vec<Arc<dyn AccessSink>>>,
    /// Where spans go when traces are on (`serve --otlp-endpoint`).
    tracer: OnceLock<Arc<Tracer>>,
}

impl Observer {
    /// Registers the server's sinks; only the first call counts (false for a later one).
    pub fn set_sinks(&self, sinks: Vec<Arc<dyn AccessSink>>) -> bool {
        self.sinks.set(sinks).is_ok()
    }

    /// Whether anything listens (callers skip building an [`Access`] otherwise).
    pub fn enabled(&self) -> bool {
        self.sinks.get().is_some_and(|s| !s.is_empty())
    }

    /// Turns traces on; only the first call counts (false for a later one).
    pub fn set_tracer(&self, tracer: Arc<Tracer>) -> bool {
        self.tracer.set(tracer).is_ok()
    }

    /// The tracer when traces are on: callers build no span otherwise.
    pub fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.get()
    }

    pub fn record(&self, access: &Access<'_>) {
        if let Some(sinks) = self.sinks.get() {
            for sink in sinks {
                sink.record(access);
            }
        }
    }

    /// Reports a request let in at the front door.
    pub fn admitted(&self, front: Front) {
        if let Some(sinks) = self.sinks.get() {
            for sink in sinks {
                sink.admitted(front);
            }
        }
    }

    /// Reports a request refused for want of a usable token.
    pub fn unauthenticated(&self, reason: Unauthenticated, front: Front) {
        if let Some(sinks) = self.sinks.get() {
            for sink in sinks {
                sink.unauthenticated(reason, front);
            }
        }
    }
}
