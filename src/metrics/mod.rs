//! The Prometheus metrics (SPEC §14), in the Prometheus text format through
//! `prometheus-client`. Two kinds:
//!
//! - counters and histograms fed by the observer ([`crate::observe`]), which the HTTP guard,
//!   the REST check and the tool calls report to: [`Metrics`] is one of its sinks. Recording
//!   takes no lock but a family's read lock, and allocates only the first time a label set is
//!   seen; labels come from bounded sets (`names`), never carry a token id or a secret;
//! - gauges read when scraped (`scrape`): sessions, connections, streams, upstream states, the
//!   store's size, tokens by status, OAuth clients and grants.
//!
//! Served at `/metrics` on the listener of `serve --metrics ADDR` (no token: keep it on
//! loopback or a private network) and on the main listener for admin tokens
//! (`rest`).

mod names;
mod scrape;

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use names::{MAX_BUCKETS, MAX_TOOLS_PER_BUCKET, OTHER};
use names::{Name, Names};
pub use scrape::OpenCounts;

use crate::gateway::Gateway;
use crate::observe::{Access, AccessSink, Front, Outcome, Unauthenticated};
use crate::service::Service;

/// Upper bounds of the upstream latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    front: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolCallLabels {
    bucket: Name,
    tool: Name,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamCallLabels {
    bucket: Name,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    bucket: Name,
}

type LatencyFamily = Family<BucketLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The server's metrics: recorded by the observer's events, encoded when scraped.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// `requests` for `outcome="allowed"`, one per front, resolved once: the one count every
    /// authenticated request makes.
    allowed_mcp: Counter,
    allowed_rest: Counter,
    tool_calls: Family<ToolCallLabels, Counter>,
    upstream_calls: Family<UpstreamCallLabels, Counter>,
    upstream_latency: LatencyFamily,
    names: Names,
    sources: Arc<scrape::Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The content type of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl Metrics {
    pub fn new(service: Arc<Service>) -> Arc<Metrics> {
        let requests = Family::<RequestLabels, Counter>::default();
        let tool_calls = Family::<ToolCallLabels, Counter>::default();
        let upstream_calls = Family::<UpstreamCallLabels, Counter>::default();
        let upstream_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let sources = Arc::new(scrape::Sources::new(service));
        let mut registry = Registry::default();
        registry.register(
            "tokenwarden_requests",
            "Requests at the HTTP front door (/mcp, /v1, /metrics) by front and outcome: \
             allowed, or the reason of the refusal",
            requests.clone(),
        );
        registry.register(
            "tokenwarden_tool_calls",
            "Tool calls (tokenwarden's own, REST endpoints, forwarded ones) by bucket (empty \
             for tokenwarden's own), tool and outcome: ok or the error code",
            tool_calls.clone(),
        );
        registry.register(
            "tokenwarden_upstream_calls",
            "Forwarded calls that reached an upstream, or found it unavailable, by bucket and \
             status: ok, is_error (a result with isError), or the error code",
            upstream_calls.clone(),
        );
        registry.register(
            "tokenwarden_upstream_call_duration_seconds",
            "How long forwarded calls took in tokenwarden, decision included, until the \
             upstream's answer or timeout, by bucket",
            upstream_latency.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&sources)));
        let allowed = |front: Front| {
            requests.get_or_create_owned(&RequestLabels {
                front: front.as_str(),
                outcome: "allowed",
            })
        };
        Arc::new(Metrics {
            allowed_mcp: allowed(Front::Mcp),
            allowed_rest: allowed(Front::Rest),
            registry,
            requests,
            tool_calls,
            upstream_calls,
            upstream_latency,
            names: Names::default(),
            sources,
        })
    }

    /// Reads the HTTP server's open sessions, connections and streams when scraped.
    pub fn watch_http(&self, open: Arc<dyn OpenCounts>) {
        self.sources.watch_http(open);
    }

    /// Reads the upstreams' connection states when scraped.
    pub fn watch_gateway(&self, gateway: Arc<Gateway>) {
        self.sources.watch_gateway(gateway);
    }

    /// The exposition, in the Prometheus text format. Gauges are read on a blocking thread
    /// (they read the store and take the session table's lock).
    pub async fn exposition(self: &Arc<Self>) -> String {
        let metrics = Arc::clone(self);
        tokio::task::spawn_blocking(move || metrics.encode())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("encoding the metrics failed: {e}");
                String::new()
            })
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        text
    }

    /// The answer to `GET /metrics`.
    pub async fn response(self: &Arc<Self>) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            self.exposition().await,
        )
            .into_response()
    }

    /// The application of `serve --metrics ADDR`: `GET /metrics` without a token, 404
    /// elsewhere.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let metrics = Arc::clone(self);
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = Arc::clone(&metrics);
                    async move { metrics.response().await }
                }),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "Not Found: the metrics are at /metrics",
                )
            })
    }

    fn tool_call(&self, access: &Access<'_>, tool: &str) {
        let outcome = access.outcome.as_str();
        let Some(bucket) = access.bucket else {
            let labels = ToolCallLabels {
                bucket: Name::Fixed(""),
                tool: Names::own_tool(tool),
                outcome,
            };
            self.tool_calls.get_or_create(&labels).inc();
            return;
        };
        let (bucket, tool) = self.names.gateway_tool(bucket, tool);
        if let Some(status) = upstream_status(access) {
            let labels = UpstreamCallLabels {
                bucket: bucket.clone(),
                status,
            };
            self.upstream_calls.get_or_create(&labels).inc();
            if status != "upstream_unavailable" {
                let labels = BucketLabels {
                    bucket: bucket.clone(),
                };
                let seconds = access.duration.as_secs_f64();
                self.upstream_latency
                    .get_or_create(&labels)
                    .observe(seconds);
            }
        }
        let labels = ToolCallLabels {
            bucket,
            tool,
            outcome,
        };
        self.tool_calls.get_or_create(&labels).inc();
    }
}

/// What became of a forwarded call upstream, or `None` for a call that never got there
/// (refused by the decision, its lineage's share of the upstream taken) or was cancelled (by
/// the client, or when its token lost standing).
fn upstream_status(access: &Access<'_>) -> Option<&'static str> {
    match access.outcome {
        Outcome::Ok if access.upstream_is_error == Some(true) => Some("is_error"),
        Outcome::Ok => Some("ok"),
        Outcome::Error(
            code @ ("upstream_error"
            | "upstream_timeout"
            | "upstream_unavailable"
            | "upstream_result_too_large"),
        ) => Some(code),
        Outcome::Error(_) => None,
    }
}

impl AccessSink for Metrics {
    fn record(&self, access: &Access<'_>) {
        match access.tool {
            Some(tool) => self.tool_call(access, tool),
            None => {
                let labels = RequestLabels {
                    front: access.front.as_str(),
                    outcome: access.outcome.as_str(),
                };
                self.requests.get_or_create(&labels).inc();
            }
        }
    }

    fn admitted(&self, front: Front) {
        match front {
            Front::Mcp => self.allowed_mcp.inc(),
            Front::Rest => self.allowed_rest.inc(),
        };
    }

    fn unauthenticated(&self, reason: Unauthenticated, front: Front) {
        let labels = RequestLabels {
            front: front.as_str(),
            outcome: reason.as_str(),
        };
        self.requests.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests;
