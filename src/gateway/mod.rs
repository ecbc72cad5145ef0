//! The gateway (SPEC §10): the user's own MCP servers as buckets, their tools exposed as
//! `<bucket>__<tool>`.
//!
//! - [`config`]: the `mcpServers` file.
//! - [`connection`]: one task per upstream (connect, list, reconnect with backoff, forward).
//! - [`catalogue`]: the merged, name-fitted tool list.
//!
//! The gateway decides nothing: `mcp::TokenServer` asks the service (the one decision path)
//! whether a caller may list or call an exposed tool, and only then calls
//! [`Gateway::call`]. Nothing here sees a caller's secret.

pub mod catalogue;
pub mod config;
pub mod connection;
mod direct;
pub mod fair;
mod oversize;
mod progress;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use catalogue::{Catalogue, ExposedTool};
pub use config::{Upstream, UpstreamsConfig};
pub use connection::{CallFailure, Connection, ProgressSink, Status};
pub use fair::Lineage;

/// One upstream as `list_buckets` shows it.
#[derive(Clone, Debug)]
pub struct BucketInfo {
    pub name: String,
    pub transport: &'static str,
    pub status: Status,
}

pub struct Gateway {
    connections: Mutex<BTreeMap<String, Arc<Connection>>>,
    catalogue: RwLock<Arc<Catalogue>>,
    /// Bumped whenever the catalogue changes; each client session watches it to send
    /// `notifications/tools/list_changed`.
    changes: watch::Sender<u64>,
    /// Bumped whenever any upstream's status or tools change (what [`Gateway::settled`]
    /// waits on).
    statuses: watch::Sender<u64>,
    shutdown: CancellationToken,
    /// The file to re-read on SIGHUP, if any.
    pub source: Option<PathBuf>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("buckets", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Gateway {
    /// Starts one connection task per upstream and returns at once; upstreams connect in
    /// parallel in the background. Everything stops when `shutdown` is cancelled.
    pub fn start(
        config: UpstreamsConfig,
        source: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Arc<Gateway> {
        let gateway = Arc::new(Gateway {
            connections: Mutex::new(BTreeMap::new()),
            catalogue: RwLock::new(Arc::new(Catalogue::default())),
            changes: watch::channel(0).0,
            statuses: watch::channel(0).0,
            shutdown,
            source,
        });
        gateway.apply(config);
        gateway
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the running connections in line with `config`: new upstreams connect, removed
    /// ones stop, changed ones restart, unchanged ones are left alone.
    pub fn apply(self: &Arc<Self>, config: UpstreamsConfig) {
        let mut connections = self.lock();
        connections.retain(|bucket, connection| {
            let keep = config.upstreams.get(bucket) == Some(&connection.upstream);
            if !keep {
                tracing::info!(target: "upstream", bucket = %bucket, "stopping");
                connection.stop();
            }
            keep
        });
        for (bucket, upstream) in config.upstreams {
            if connections.contains_key(&bucket) {
                continue;
            }
            let weak = Arc::downgrade(self);
            let on_change: connection::OnChange = Arc::new(move || {
                if let Some(gateway) = weak.upgrade() {
                    gateway.rebuild();
                }
            });
            let connection = Connection::start(upstream, self.shutdown.child_token(), on_change);
            connections.insert(bucket, connection);
        }
        drop(connections);
        self.rebuild();
    }

    /// Re-merges every connection's tools and tells the client sessions if anything changed.
    fn rebuild(&self) {
        // Under the catalogue's write lock from the first read of the connections' tools to the
        // write: two rebuilds at once (two upstreams connecting together) could otherwise
        // finish in the other order, the one that read before an upstream's tools were set
        // writing last and dropping them until the next change.
        let mut current = self.catalogue.write().unwrap_or_else(|p| p.into_inner());
        self.statuses.send_modify(|n| *n += 1);
        let connections: Vec<Arc<Connection>> = self.lock().values().cloned().collect();
        let lists: Vec<Arc<Vec<rmcp::model::Tool>>> =
            connections.iter().map(|c| c.tools()).collect();
        let inputs: Vec<catalogue::UpstreamTools<'_>> = connections
            .iter()
            .zip(&lists)
            .map(|(c, tools)| catalogue::UpstreamTools {
                bucket: &c.upstream.bucket,
                tools,
                read_only_tools: c.upstream.read_only_tools.as_deref(),
            })
            .collect();
        let merged = Catalogue::build(&inputs);
        let same = current.len() == merged.len()
            && current.iter().zip(merged.iter()).all(|(a, b)| {
                a.name == b.name && a.read_only == b.read_only && a.definition == b.definition
            });
        if !same {
            *current = Arc::new(merged);
            drop(current);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The merged catalogue as it is now.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        Arc::clone(&self.catalogue.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Returns once no upstream is on its first attempt to connect any more (each is
    /// connected or unavailable), or at `deadline`: so that a client's first `tools/list`
    /// can show the upstreams' tools rather than only tokenwarden's own.
    pub async fn settled(&self, deadline: tokio::time::Instant) {
        let mut statuses = self.statuses.subscribe();
        loop {
            let connecting = self
                .lock()
                .values()
                .any(|c| c.status() == Status::Connecting);
            if !connecting {
                return;
            }
            tokio::select! {
                changed = statuses.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Fires whenever the catalogue changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn buckets(&self) -> Vec<BucketInfo> {
        self.lock()
            .values()
            .map(|c| BucketInfo {
                name: c.upstream.bucket.clone(),
                transport: c.upstream.transport.kind(),
                status: c.status(),
            })
            .collect()
    }

    /// Forwards a call of `tool` (already authorised by the caller of this function); it
    /// counts against `lineage`'s fair share of the upstream's call slots. `trace` is the
    /// upstream call's span, sent as its `traceparent` (when traces are on).
    pub async fn call(
        &self,
        tool: &ExposedTool,
        arguments: Option<rmcp::model::JsonObject>,
        (progress, lineage): (Option<ProgressSink>, Lineage),
        cancel: &CancellationToken,
        trace: Option<crate::trace::SpanContext>,
    ) -> Result<rmcp::model::CallToolResult, CallFailure> {
        let connection = self.lock().get(&tool.bucket).cloned();
        let Some(connection) = connection else {
            return Err(CallFailure::Unavailable(format!(
                "upstream {} is no longer configured",
                tool.bucket
            )));
        };
        connection
            .call(
                &tool.upstream_name,
                arguments,
                (progress, lineage),
                cancel,
                trace,
            )
            .await
    }

    /// After shutdown: waits (at most a few seconds) until every upstream has been stopped,
    /// stdio children and their process groups included.
    pub async fn stopped(&self) {
        let connections: Vec<Arc<Connection>> = self.lock().values().cloned().collect();
        let all = futures_join_all(connections);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all).await;
    }

    /// Re-reads the source file (SIGHUP). An invalid file is logged; the running
    /// configuration stays.
    pub fn reload(self: &Arc<Self>) {
        let Some(path) = &self.source else {
            return;
        };
        match config::load(path) {
            Ok(config) => {
                tracing::info!("reloaded upstreams from {}", path.display());
                self.apply(config);
            }
            Err(e) => tracing::error!("reload refused, keeping the running upstreams: {e}"),
        }
    }
}

async fn futures_join_all(connections: Vec<Arc<Connection>>) {
    let mut tasks = tokio::task::JoinSet::new();
    for connection in connections {
        tasks.spawn(async move { connection.stopped().await });
    }
    while tasks.join_next().await.is_some() {}
}
