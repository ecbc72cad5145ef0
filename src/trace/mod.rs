//! Traces (SPEC §14): with `serve --otlp-endpoint URL`, each `tools/call` (MCP, either lane)
//! and each REST call becomes a small span tree: the request (a server span, `tools/call
//! <tool>` or `<METHOD> <route>`), its `decision` (the authorisation), and for a forwarded call
//! `upstream <bucket>` (a client span around the upstream call). Finished spans wait in a
//! bounded queue ([`Tracer`]) that `export` sends to an OTLP/HTTP collector once a second.
//!
//! Off by default, and then nothing here runs: every place that would start a span first asks
//! `Observer::tracer()` (one atomic load). A client's W3C `traceparent` (the HTTP header, or
//! `_meta.traceparent` of SEP-414 on rmcp's path) makes the request span its child; upstreams
//! are sent a `traceparent` naming the upstream span (`gateway`).
//!
//! Spans carry names, token ids, codes and durations: never a secret, arguments or results.

pub mod export;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;

use crate::observe::Outcome;

/// Finished spans that may wait for the exporter; beyond it new ones are dropped and counted.
pub const MAX_QUEUED: usize = 8_192;

/// A W3C trace id (16 bytes, never all zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id (8 bytes, never all zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    fn random() -> TraceId {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }
}

impl SpanId {
    fn random() -> SpanId {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }
}

fn write_hex(f: &mut std::fmt::Formatter<'_>, bytes: &[u8]) -> std::fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_hex(f, &self.0)
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Lower-case hex only, as W3C Trace Context requires.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Where a span sits: its trace, its own id, and whether it is recorded (the W3C `sampled`
/// flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace: TraceId,
    pub span: SpanId,
    pub sampled: bool,
}

impl SpanContext {
    /// A W3C `traceparent` value (Trace Context Level 1, §3.2), or `None` for anything that
    /// is not one: such a header is ignored and the request starts a new trace. Versions after
    /// `00` are read as `00` (§4.3), `ff` is invalid, ids may not be all zero.
    pub fn from_traceparent(value: &str) -> Option<SpanContext> {
        let value = value.trim_matches([' ', '\t']);
        let version = value.get(0..2).and_then(parse_hex::<1>)?[0];
        if version == 0xff || value.len() < 55 {
            return None;
        }
        if (version == 0 && value.len() != 55) || (value.len() > 55 && value.as_bytes()[55] != b'-')
        {
            return None;
        }
        let bytes = value.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace = parse_hex::<16>(value.get(3..35)?)?;
        let span = parse_hex::<8>(value.get(36..52)?)?;
        let flags = parse_hex::<1>(value.get(53..55)?)?[0];
        if trace == [0; 16] || span == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace: TraceId(trace),
            span: SpanId(span),
            sampled: flags & 1 == 1,
        })
    }

    /// This span as a `traceparent` value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace,
            self.span,
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// When something started: wall-clock time for the export, a monotonic instant for its
/// duration.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    unix_nanos: u64,
    at: Instant,
}

impl Start {
    pub fn now() -> Start {
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Start {
            unix_nanos,
            at: Instant::now(),
        }
    }
}

/// The trace context an HTTP request arrived with, put into its [`crate::mcp::Authenticated`]
/// by the `/mcp` guard and the REST check only when traces are on.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The client's span, from a valid `traceparent` header.
    pub parent: Option<SpanContext>,
    /// When the request was let in.
    pub start: Start,
    /// A REST request's method and route (`GET`, `/v1/tokens/{id}`): its span's name.
    pub route: Option<(axum::http::Method, Arc<str>)>,
}

impl Incoming {
    /// A request without a trace context of its own (stdio, say), starting now.
    pub fn now() -> Incoming {
        Incoming {
            parent: None,
            start: Start::now(),
            route: None,
        }
    }

    /// The context of an HTTP request with `headers`, starting now. Of several `traceparent`
    /// headers none is trusted (W3C Trace Context §3.2: a vendor may not combine them).
    pub fn from_headers(headers: &HeaderMap) -> Incoming {
        let mut values = headers.get_all("traceparent").iter();
        let parent = match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok().and_then(SpanContext::from_traceparent),
            _ => None,
        };
        Incoming {
            parent,
            ..Incoming::now()
        }
    }
}

/// What kind of span (OTLP's `SpanKind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Internal,
    Server,
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Str(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Str(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

/// A span's status: unset (it went as planned), or an error with its code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Unset,
    Error(&'static str),
}

/// A finished span, as the exporter sends it.
#[derive(Clone, Debug, Default)]
pub struct Finished {
    pub trace: TraceId,
    pub id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent is another process's (the client's span).
    pub remote_parent: bool,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

/// The finished spans waiting for the exporter: a bounded queue; a span that finds it full is
/// dropped and counted.
#[derive(Default)]
pub struct Tracer {
    queue: Mutex<Vec<Finished>>,
    dropped: AtomicU64,
}

impl Tracer {
    pub fn new() -> Arc<Tracer> {
        Arc::new(Tracer::default())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Finished>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, span: Finished) {
        let mut queue = self.queue();
        if queue.len() >= MAX_QUEUED {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(span);
    }

    /// Takes every waiting span.
    pub fn take(&self) -> Vec<Finished> {
        std::mem::take(&mut *self.queue())
    }

    /// How many spans were dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Starts a request's span (`kind` Server): a child of the client's span when it sent one,
    /// else the root of a new trace. A parent that is not sampled makes the whole tree
    /// unrecorded (as OpenTelemetry's default parent-based sampler does), though its context
    /// still goes upstream.
    pub fn start_request(self: &Arc<Self>, name: String, incoming: &Incoming) -> Span {
        let (trace, parent, sampled) = match incoming.parent {
            Some(parent) => (parent.trace, Some(parent.span), parent.sampled),
            None => (TraceId::random(), None, true),
        };
        Span::begin(
            Arc::clone(self),
            (trace, parent, sampled),
            (name, Kind::Server),
            incoming.start,
        )
        .remote_parent(parent.is_some())
    }
}

/// A span in progress; it is finished (and queued, when sampled) when dropped.
pub struct Span {
    tracer: Arc<Tracer>,
    record: Finished,
    started: Instant,
    sampled: bool,
}

impl Span {
    fn begin(
        tracer: Arc<Tracer>,
        (trace, parent, sampled): (TraceId, Option<SpanId>, bool),
        (name, kind): (String, Kind),
        start: Start,
    ) -> Span {
        Span {
            tracer,
            record: Finished {
                trace,
                id: SpanId::random(),
                parent,
                name,
                kind,
                start_unix_nanos: start.unix_nanos,
                ..Finished::default()
            },
            started: start.at,
            sampled,
        }
    }

    fn remote_parent(mut self, remote: bool) -> Span {
        self.record.remote_parent = remote;
        self
    }

    pub fn context(&self) -> SpanContext {
        SpanContext {
            trace: self.record.trace,
            span: self.record.id,
            sampled: self.sampled,
        }
    }

    /// What this span's children are started from.
    pub fn handle(&self) -> Handle {
        Handle {
            tracer: Arc::clone(&self.tracer),
            context: self.context(),
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.record.attributes.push((key, value.into()));
    }

    /// Records how the work ended: `tokenwarden.outcome`, and for an error code the error
    /// status and `error.type`.
    pub fn outcome(&mut self, outcome: Outcome) {
        self.set("tokenwarden.outcome", outcome.as_str());
        if let Outcome::Error(code) = outcome {
            self.fail(code);
        }
    }

    /// Marks the span failed with `code` (also `error.type`).
    pub fn fail(&mut self, code: &'static str) {
        self.record.status = Status::Error(code);
        self.set("error.type", code);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.sampled {
            return;
        }
        let mut record = std::mem::take(&mut self.record);
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        record.end_unix_nanos = record.start_unix_nanos.saturating_add(elapsed);
        self.tracer.push(record);
    }
}

/// A span's context and tracer, which starts its children wherever the work runs (the blocking
/// pool, say); cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tracer: Arc<Tracer>,
    context: SpanContext,
}

impl Handle {
    /// A child span starting now.
    pub fn child(&self, name: impl Into<String>, kind: Kind) -> Span {
        Span::begin(
            Arc::clone(&self.tracer),
            (
                self.context.trace,
                Some(self.context.span),
                self.context.sampled,
            ),
            (name.into(), kind),
            Start::now(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read_as_w3c_trace_context_says() {
        let context = SpanContext::from_traceparent(EXAMPLE).unwrap();
        assert_eq!(
            context.trace.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span.to_string(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.traceparent(), EXAMPLE);
        let unsampled =
            SpanContext::from_traceparent(&EXAMPLE.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled);
        // A later version: its first 55 characters, followed by a dash and more.
        let later = format!("cc{}-what-comes-next", &EXAMPLE[2..]);
        assert_eq!(
            SpanContext::from_traceparent(&later).unwrap().trace,
            context.trace
        );
        for bad in [
            "",
            "garbage",
            &EXAMPLE.to_uppercase(),
            &EXAMPLE.replace("00-4b", "ff-4b"),
            &format!("{EXAMPLE}-extra"),
            &format!("{EXAMPLE}0"),
            &EXAMPLE[..54],
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            &format!("cc{}x", &EXAMPLE[2..]),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::from_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_traceparent_header_is_a_parent_and_two_are_none() {
        let mut headers = HeaderMap::new();
        assert!(Incoming::from_headers(&headers).parent.is_none());
        headers.append("traceparent", EXAMPLE.parse().unwrap());
        assert!(Incoming::from_headers(&headers).parent.is_some());
        headers.append("traceparent", EXAMPLE.parse().unwrap());
        assert!(Incoming::from_headers(&headers).parent.is_none());
    }

    #[test]
    fn spans_nest_under_the_client_and_the_queue_is_bounded() {
        let tracer = Tracer::new();
        let mut incoming = Incoming::now();
        incoming.parent = SpanContext::from_traceparent(EXAMPLE);
        let request = tracer.start_request("tools/call whoami".into(), &incoming);
        let decision = request.handle().child("decision", Kind::Internal);
        let (request_id, decision_id) = (request.context().span, decision.context().span);
        drop(decision);
        drop(request);
        let spans = tracer.take();
        assert_eq!(spans.len(), 2);
        let (decision, request) = (&spans[0], &spans[1]);
        assert_eq!(
            request.trace.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(request.parent.unwrap().to_string(), "00f067aa0ba902b7");
        assert!(request.remote_parent);
        assert_eq!(request.id, request_id);
        assert_eq!(
            (decision.id, decision.parent),
            (decision_id, Some(request_id))
        );
        assert!(!decision.remote_parent);
        assert!(request.end_unix_nanos >= request.start_unix_nanos);

        for _ in 0..MAX_QUEUED + 5 {
            drop(tracer.start_request("x".into(), &Incoming::now()));
        }
        assert_eq!(tracer.take().len(), MAX_QUEUED);
        assert_eq!(tracer.take_dropped(), 5);
        assert_eq!(tracer.take_dropped(), 0);

        // A client that does not sample: nothing recorded, the context still carried.
        incoming.parent = SpanContext::from_traceparent(&EXAMPLE.replace("-01", "-00"));
        let request = tracer.start_request("x".into(), &incoming);
        assert!(
            !request
                .handle()
                .child("decision", Kind::Internal)
                .context()
                .sampled
        );
        drop(request);
        assert!(tracer.take().is_empty());
    }
}
