//! Sends finished spans to an OTLP/HTTP collector: once a second the waiting spans go out as
//! POSTs to `URL/v1/traces`, at most [`MAX_BATCH`] spans each, in OTLP's JSON encoding (the
//! `application/json` form of `ExportTraceServiceRequest`: ids as lower-case hex, times as
//! decimal strings of nanoseconds, enums as integers).
//!
//! The exporter never touches a request: calls only push to the [`Tracer`]'s bounded queue. A
//! collector that is down, slow or refusing costs the spans of that batch and one warning a
//! minute at most (with how many spans were lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Finished, Kind, Status, Tracer, Value};

/// How often waiting spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Spans in one POST.
pub const MAX_BATCH: usize = 1_024;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about the collector per this.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long the last batch may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// The signal's path under the collector's base URL (OTLP/HTTP).
const TRACES_PATH: &str = "/v1/traces";

/// `serve --otlp-endpoint URL`: the collector's base URL (`/v1/traces` is added unless it is
/// there already), plain `http://` only, without credentials, query or fragment.
pub fn endpoint(text: &str) -> Result<reqwest::Url, String> {
    let refuse = |why: &str| format!("--otlp-endpoint: {why}");
    let mut url = reqwest::Url::parse(text.trim()).map_err(|e| {
        refuse(&format!(
            "not a URL ({e}); give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318"
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: what sits there may be a credential.
        return Err(refuse("the URL may not carry credentials"));
    }
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(refuse(
                "this build of tokenwarden speaks plain http only: send spans to a collector \
                 or agent on this host or a trusted network, e.g. http://127.0.0.1:4318",
            ));
        }
        _ => {
            return Err(refuse(
                "give the collector's URL with http://, e.g. http://127.0.0.1:4318",
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("the URL names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("the URL takes no query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    let path = if path.ends_with(TRACES_PATH) {
        path.to_owned()
    } else {
        format!("{path}{TRACES_PATH}")
    };
    url.set_path(&path);
    Ok(url)
}

/// The OTLP/JSON body for `spans`.
pub fn encode(spans: &[Finished]) -> Vec<u8> {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: vec![
                    KeyValue {
                        key: "service.name",
                        value: AnyValue::String("tokenwarden"),
                    },
                    KeyValue {
                        key: "service.version",
                        value: AnyValue::String(env!("CARGO_PKG_VERSION")),
                    },
                ],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "tokenwarden",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(JsonSpan::from).collect(),
            }],
        }],
    };
    serde_json::to_vec(&request).expect("spans serialise")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<JsonSpan<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpan<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    /// W3C trace flags (sampled) and whether the parent is another process's.
    flags: u32,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    status: JsonStatus,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    /// int64 is a decimal string in OTLP's JSON, as in protobuf's JSON mapping.
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
}

#[derive(Serialize)]
struct JsonStatus {
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'static str,
    code: u8,
}

fn attribute<'a>(key: &'a str, value: &'a Value) -> KeyValue<'a> {
    let value = match value {
        Value::Str(s) => AnyValue::String(s),
        Value::Int(n) => AnyValue::Int(n.to_string()),
        Value::Bool(b) => AnyValue::Bool(*b),
    };
    KeyValue { key, value }
}

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` and `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// Only sampled spans are exported.
const SAMPLED: u32 = 0x01;

impl<'a> From<&'a Finished> for JsonSpan<'a> {
    fn from(span: &'a Finished) -> JsonSpan<'a> {
        let remote = if span.remote_parent { IS_REMOTE } else { 0 };
        JsonSpan {
            trace_id: span.trace.to_string(),
            span_id: span.id.to_string(),
            parent_span_id: span.parent.map(|p| p.to_string()),
            flags: SAMPLED | HAS_IS_REMOTE | remote,
            name: &span.name,
            kind: match span.kind {
                Kind::Internal => 1,
                Kind::Server => 2,
                Kind::Client => 3,
            },
            start_time_unix_nano: span.start_unix_nanos.to_string(),
            end_time_unix_nano: span.end_unix_nanos.to_string(),
            attributes: span
                .attributes
                .iter()
                .map(|(key, value)| attribute(key, value))
                .collect(),
            status: match span.status {
                Status::Unset => JsonStatus {
                    message: "",
                    code: 0,
                },
                Status::Error(code) => JsonStatus {
                    message: code,
                    code: 2,
                },
            },
        }
    }
}

/// Sends the tracer's spans to `url` once a second until `shutdown`, then once more (briefly).
pub async fn run(tracer: Arc<Tracer>, url: reqwest::Url, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!("cannot set up the span exporter, no spans will be sent: {e}");
            return;
        }
    };
    let mut exporter = Exporter {
        client,
        url,
        lost: 0,
        last_warning: None,
    };
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => exporter.export(&tracer).await,
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(FINAL_FLUSH, exporter.export(&tracer)).await;
                return;
            }
        }
    }
}

struct Exporter {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Spans lost (dropped at the queue or in a failed POST) since the last warning.
    lost: u64,
    last_warning: Option<Instant>,
}

impl Exporter {
    async fn export(&mut self, tracer: &Tracer) {
        let spans = tracer.take();
        let dropped = tracer.take_dropped();
        self.lost += dropped;
        let mut failure = (dropped > 0).then(|| {
            format!(
                "more than {} spans waited for the collector",
                super::MAX_QUEUED
            )
        });
        for batch in spans.chunks(MAX_BATCH) {
            if let Err(e) = self.post(encode(batch)).await {
                self.lost += batch.len() as u64;
                failure = Some(e);
            }
        }
        if let Some(why) = failure {
            self.warn(&why);
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot send spans to {}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the collector at {} answered HTTP {status}",
                self.url
            ));
        }
        Ok(())
    }

    /// At most once a minute, with the spans lost since the last warning.
    fn warn(&mut self, why: &str) {
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_EVERY)
        {
            return;
        }
        self.last_warning = Some(Instant::now());
        let lost = std::mem::take(&mut self.lost);
        tracing::warn!(lost_spans = lost, "trace export: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{SpanId, TraceId};

    #[test]
    fn the_endpoint_is_a_base_url_or_the_traces_path() {
        for (given, expected) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            ("http://collector/otlp", "http://collector/otlp/v1/traces"),
            ("http://collector/v1/traces", "http://collector/v1/traces"),
            (
                " http://collector/v1/traces/ ",
                "http://collector/v1/traces",
            ),
        ] {
            assert_eq!(endpoint(given).unwrap().as_str(), expected, "{given}");
        }
        for (given, says) in [
            ("https://collector", "plain http only"),
            ("collector:4318", "with http://"),
            ("http://user:pw@collector", "credentials"),
            ("http://collector/?a=1", "no query"),
            ("not a url", "not a URL"),
        ] {
            let error = endpoint(given).unwrap_err();
            assert!(error.contains(says), "{given}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }

    /// The shape of OTLP's JSON encoding, as its specification's example has it.
    #[test]
    fn spans_encode_as_otlp_json() {
        let span = Finished {
            trace: TraceId([0x5b; 16]),
            id: SpanId([0xee; 8]),
            parent: Some(SpanId([0x01; 8])),
            remote_parent: true,
            name: "tools/call whoami".into(),
            kind: Kind::Server,
            start_unix_nanos: 1_544_712_660_000_000_000,
            end_unix_nanos: 1_544_712_661_000_000_000,
            attributes: vec![
                ("tokenwarden.tool", Value::Str("whoami".into())),
                ("n", Value::Int(-3)),
                ("b", Value::Bool(true)),
            ],
            status: Status::Error("forbidden"),
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&[span])).unwrap();
        let resource = &json["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "tokenwarden"}})
        );
        assert_eq!(resource["scopeSpans"][0]["scope"]["name"], "tokenwarden");
        let span = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(
            span,
            &serde_json::json!({
                "traceId": "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b",
                "spanId": "eeeeeeeeeeeeeeee",
                "parentSpanId": "0101010101010101",
                "flags": 0x301,
                "name": "tools/call whoami",
                "kind": 2,
                "startTimeUnixNano": "1544712660000000000",
                "endTimeUnixNano": "1544712661000000000",
                "attributes": [
                    {"key": "tokenwarden.tool", "value": {"stringValue": "whoami"}},
                    {"key": "n", "value": {"intValue": "-3"}},
                    {"key": "b", "value": {"boolValue": true}},
                ],
                "status": {"message": "forbidden", "code": 2},
            })
        );
        let root = Finished::default();
        let json: serde_json::Value = serde_json::from_slice(&encode(&[root])).unwrap();
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none(), "{span}");
        assert_eq!(span["status"], serde_json::json!({"code": 0}));
        assert_eq!(span["flags"], 0x101);
    }
}
