//! The gauges read when Prometheus scrapes, not kept up to date on the request path: what the
//! HTTP server holds open, each upstream's connection state, the store's size, and the census
//! of tokens and OAuth clients and grants (kept for a while: it walks an index).
//!
//! Everything here runs on a blocking thread ([`super::Metrics::exposition`]).

use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::gateway::{Gateway, Status};
use crate::service::{Census, Service};

/// What an HTTP listener holds open, read at scrape time on a blocking thread.
pub trait OpenCounts: Send + Sync {
    /// Live MCP sessions.
    fn sessions(&self) -> usize;
    /// Open connections.
    fn connections(&self) -> usize;
    /// Open `GET` streams.
    fn streams(&self) -> usize;
}

/// The census is counted again when a scrape finds it older than this many times what the
/// last count took, so that counting costs about 1 % of one core at most, whatever the size of
/// the store (a million tokens: a count every minute or so)...
const CENSUS_COST_FACTOR: u32 = 100;
/// ... and never more often than this.
const CENSUS_MIN_AGE: Duration = Duration::from_secs(5);

struct Counted {
    census: Census,
    at: Instant,
    took: Duration,
}

/// The last census, and who is counting the next.
#[derive(Default)]
struct CensusCache {
    last: RwLock<Option<Arc<Counted>>>,
    counting: Mutex<()>,
}

impl CensusCache {
    /// The census, counted again first if it is stale and nobody else is counting (a scrape
    /// that finds a count under way uses the last one).
    fn current(&self, service: &Service) -> Option<Arc<Counted>> {
        let last = self.last.read().unwrap_or_else(|p| p.into_inner()).clone();
        let fresh = last
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < (c.took * CENSUS_COST_FACTOR).max(CENSUS_MIN_AGE));
        if fresh {
            return last;
        }
        let Ok(_counting) = self.counting.try_lock() else {
            return last;
        };
        let started = Instant::now();
        match service.census() {
            Ok(census) => {
                let counted = Arc::new(Counted {
                    census,
                    at: Instant::now(),
                    took: started.elapsed(),
                });
                *self.last.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&counted));
                Some(counted)
            }
            Err(e) => {
                tracing::warn!("counting tokens for the metrics failed: {e}");
                last
            }
        }
    }
}

/// The scrape-time gauges' sources; the HTTP server and the gateway are attached once they
/// exist.
pub(super) struct Sources {
    service: Arc<Service>,
    http: OnceLock<Arc<dyn OpenCounts>>,
    gateway: OnceLock<Arc<Gateway>>,
    census: CensusCache,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    pub(super) fn new(service: Arc<Service>) -> Sources {
        Sources {
            service,
            http: OnceLock::new(),
            gateway: OnceLock::new(),
            census: CensusCache::default(),
        }
    }

    pub(super) fn watch_http(&self, open: Arc<dyn OpenCounts>) {
        let _ = self.http.set(open);
    }

    pub(super) fn watch_gateway(&self, gateway: Arc<Gateway>) {
        let _ = self.gateway.set(gateway);
    }
}

/// The states an upstream connection can be in, each a series of its own (1 for the
/// current one).
const UPSTREAM_STATES: [&str; 3] = ["connecting", "connected", "unavailable"];

fn gauge(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    value: u64,
) -> std::fmt::Result {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    gauge.encode(metric)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(http) = self.http.get() {
            let live = [
                (
                    "tokenwarden_sessions",
                    "Live MCP sessions over HTTP.",
                    http.sessions(),
                ),
                (
                    "tokenwarden_connections",
                    "Open HTTP connections on the main listener.",
                    http.connections(),
                ),
                (
                    "tokenwarden_streams",
                    "Open GET /mcp response streams.",
                    http.streams(),
                ),
            ];
            for (name, help, value) in live {
                gauge(&mut encoder, (name, help), value as u64)?;
            }
        }
        if let Some(gateway) = self.gateway.get() {
            let mut family = encoder.encode_descriptor(
                "tokenwarden_upstream_state",
                "Each configured upstream's connection state: 1 for the state it is in, 0 for \
                 the others.",
                None,
                MetricType::Gauge,
            )?;
            for bucket in gateway.buckets() {
                let current = match bucket.status {
                    Status::Connecting => "connecting",
                    Status::Connected => "connected",
                    Status::Unavailable(_) => "unavailable",
                };
                for state in UPSTREAM_STATES {
                    let labels = [("bucket", bucket.name.as_str()), ("state", state)];
                    let value = ConstGauge::new(i64::from(state == current));
                    value.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        gauge(
            &mut encoder,
            (
                "tokenwarden_store_size_bytes",
                "Bytes the store takes on disk.",
            ),
            self.service.store().size_on_disk(),
        )?;
        if let Some(counted) = self.census.current(&self.service) {
            let census = &counted.census;
            let mut family = encoder.encode_descriptor(
                "tokenwarden_tokens",
                "Tokens by stored status (an expired token keeps the status it had); counted \
                 again when a scrape finds the count older than 5 s, or 100 times what it took.",
                None,
                MetricType::Gauge,
            )?;
            for (status, count) in &census.tokens {
                let labels = [("status", status.as_str())];
                let value = ConstGauge::new(i64::try_from(*count).unwrap_or(i64::MAX));
                value.encode(family.encode_family(&labels)?)?;
            }
            gauge(
                &mut encoder,
                ("tokenwarden_oauth_clients", "Registered OAuth clients."),
                census.oauth_clients,
            )?;
            gauge(
                &mut encoder,
                (
                    "tokenwarden_oauth_grants",
                    "Stored OAuth grants: a connector's sign-in, until it ends (revoked, refresh \
                     expired or reused, client removed).",
                ),
                census.oauth_grants,
            )?;
        }
        Ok(())
    }
}
