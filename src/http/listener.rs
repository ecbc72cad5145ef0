//! The accept loop the product runs: every connection gets TCP_NODELAY, a header deadline, an
//! idle deadline, and a place in a bounded table, so that nobody can hold the server's sockets.
//!
//! A small JSON-RPC reply must not wait ~40 ms for Nagle's algorithm and the client's delayed
//! ACK, hence TCP_NODELAY on every accepted socket. Idle and half-sent connections are what an
//! attacker holds cheaply, hence three bounds: headers must arrive within `header_timeout`, a
//! kept-alive connection with no request in flight closes after `idle_timeout`, and when the
//! table is full (or the process is out of descriptors) the longest-idle connection is closed
//! to make room, in this order: the oldest connection without standing (one that never had a
//! request the guard counted against a token's lineage, or whose last request was refused:
//! no token, OAuth, health checks, a 429), then the longest-idle kept-alive connection, then
//! the longest-running request without a [`Shield`]. Only a counted request shields its
//! connection, so nothing uncounted can hold the slots others need, nor push out a client in
//! good standing between its requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::secret::TokenId;

use super::repoll::Repoll;

/// How the accept loop bounds its connections (SPEC §6 defaults).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this; a new connection must start one within it.
    pub header_timeout: Duration,
    /// A kept-alive connection with nothing in flight closes after this.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One open connection as the table sees it.
struct Connection {
    /// Requests (and their response bodies) in flight.
    busy: AtomicUsize,
    /// Whether a request ever arrived: a connection that never sends one gets only the header
    /// deadline.
    used: AtomicBool,
    /// Milliseconds since the table's epoch when the connection last became idle.
    idle_since: AtomicU64,
    /// Requests on it that the guard counted against a lineage (see [`Shield`]).
    shielded: Arc<AtomicUsize>,
    close: CancellationToken,
    /// Set when it is closed with a request in flight: drop it at once.
    forced: AtomicBool,
    /// [`STANDING`] once a request the guard counted against a lineage came (a client in
    /// good standing), [`REFUSED`] when one of its requests is refused: a connection without
    /// standing goes first when room is needed, whether idle or busy (no token, OAuth and
    /// health requests never earn it), before any idle kept-alive connection that has it.
    standing: Arc<AtomicU8>,
    /// Milliseconds since the table's epoch (plus one) since which a write to the client has
    /// been waiting for it to read; 0 while writes go through.
    write_blocked_since: AtomicU64,
    /// The lineage of the last request counted on it.
    lineage: Mutex<Option<TokenId>>,
    /// Its peer as per-peer bounds count it (`cidr::peer_key`).
    peer: IpAddr,
}

/// A connection's standing: nothing counted on it yet.
const UNKNOWN: u8 = 0;
/// Its last counted request was let in.
const STANDING: u8 = 1;
/// Its last request was refused (401, 429).
const REFUSED: u8 = 2;

/// Put in every request's extensions: the guard raises it for a request it counted against
/// a lineage, which spares the connection from eviction while the request lasts and gives it
/// standing, or takes the standing away when it refuses the request.
#[derive(Clone)]
pub(crate) struct Shield(Arc<Connection>);

impl Shield {
    /// The request is counted against `lineage`: its connection is spared while it runs,
    /// has standing, and counts as `lineage`'s when room is made.
    pub(crate) fn raise(&self, lineage: &TokenId) -> Raised {
        let connection = &self.0;
        connection.standing.store(STANDING, Ordering::Release);
        connection.shielded.fetch_add(1, Ordering::AcqRel);
        let mut held = connection.lineage.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref() != Some(lineage) {
            *held = Some(lineage.clone());
        }
        Raised(Arc::clone(&connection.shielded))
    }

    /// The request is refused: its connection loses its standing.
    pub(crate) fn doom(&self) {
        self.0.standing.store(REFUSED, Ordering::Release);
    }
}

/// A raised [`Shield`]; lowered when dropped.
pub(crate) struct Raised(Arc<AtomicUsize>);

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What making room for a connection did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Room {
    /// Nothing could be closed.
    None,
    /// A connection was closed.
    Made,
    /// The connection closed was waiting for a refusal: a client (this peer) retrying
    /// refused requests.
    FromRefused(IpAddr),
}

/// Every open connection, for eviction and idle sweeps.
struct Table {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Peers whose refused connections were closed to make room, and when (ms since `epoch`)
    /// their next connection may start: see [`Table::paced_start`].
    paced: Mutex<HashMap<IpAddr, u64>>,
}

impl Table {
    fn new() -> Table {
        Table {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            paced: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Connections not already closing: what counts against the limit when a new one comes
    /// (a closed connection leaves the table only when its task next runs, and without this
    /// a fast accept loop closed a kept-alive client for room already made).
    fn open_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.close.is_cancelled())
            .count()
    }

    fn insert(&self, peer: IpAddr) -> (u64, Arc<Connection>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now_ms()),
            shielded: Arc::new(AtomicUsize::new(0)),
            close: CancellationToken::new(),
            forced: AtomicBool::new(false),
            standing: Arc::new(AtomicU8::new(UNKNOWN)),
            write_blocked_since: AtomicU64::new(0),
            lineage: Mutex::new(None),
            peer,
        });
        self.lock().insert(id, Arc::clone(&connection));
        (id, connection)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection that has been idle longest — of the lineage holding the most
    /// connections, when it holds more than half of `max` (one lineage's many kept-alive
    /// connections must not push out everyone else's) — false when every one is busy.
    fn evict_longest_idle(&self, max: usize) -> bool {
        let open = self.lock();
        let lineage_of =
            |c: &Connection| c.lineage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut held: HashMap<TokenId, usize> = HashMap::new();
        for c in open.values() {
            if let Some(lineage) = lineage_of(c) {
                *held.entry(lineage).or_default() += 1;
            }
        }
        let greedy = held
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .filter(|(_, n)| *n > max / 2)
            .map(|(lineage, _)| lineage);
        let idle = || {
            open.values()
                .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.close.is_cancelled())
        };
        let victim = greedy
            .and_then(|greedy| {
                idle()
                    .filter(|c| lineage_of(c).as_ref() == Some(&greedy))
                    .min_by_key(|c| c.idle_since.load(Ordering::Relaxed))
            })
            .or_else(|| idle().min_by_key(|c| c.idle_since.load(Ordering::Relaxed)));
        match victim {
            Some(c) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes the connection whose request has run longest without a shield; false when every
    /// busy connection is shielded.
    fn evict_unshielded(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|c| c.shielded.load(Ordering::Acquire) == 0 && !c.close.is_cancelled())
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.forced.store(true, Ordering::Release);
                c.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes a connection without standing (never shielded): one that has not (yet) had a
    /// counted request, or whose last request was refused; `None` when there is none. It is
    /// taken from the address holding the most of them (a flood of silent or refused
    /// connections from one place gives way before anyone else's request, which may be on its
    /// way: an OAuth exchange whose body follows its headers, a first request not yet read),
    /// an idle one before one busy with a request, then the oldest, so a client that just
    /// connected has as long as its own address's turnover to send its first request.
    fn evict_without_standing(&self) -> Option<Room> {
        let open = self.lock();
        let candidates = || {
            open.values().filter(|c| {
                c.standing.load(Ordering::Acquire) != STANDING
                    && c.shielded.load(Ordering::Acquire) == 0
                    && !c.close.is_cancelled()
            })
        };
        let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
        for c in candidates() {
            *per_peer.entry(c.peer).or_default() += 1;
        }
        // Among addresses holding as many, the oldest connection decides (no arbitrary tie).
        let victim = candidates().min_by_key(|c| {
            (
                std::cmp::Reverse(per_peer[&c.peer]),
                c.busy.load(Ordering::Acquire) != 0,
                c.idle_since.load(Ordering::Relaxed),
            )
        })?;
        victim.forced.store(true, Ordering::Release);
        victim.close.cancel();
        Some(if victim.standing.load(Ordering::Acquire) == REFUSED {
            Room::FromRefused(victim.peer)
        } else {
            Room::Made
        })
    }

    /// Makes room for one more connection: the oldest without standing, else the longest
    /// idle, else the longest-running unshielded one.
    fn make_room(&self, max: usize) -> Room {
        if let Some(room) = self.evict_without_standing() {
            room
        } else if self.evict_longest_idle(max) || self.evict_unshielded() {
            Room::Made
        } else {
            Room::None
        }
    }

    /// `peer` retries refused requests at capacity: its connections are paced from now on.
    fn pace(&self, peer: IpAddr) {
        let now = self.now_ms();
        let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
        if paced.len() >= MAX_PACED_PEERS && !paced.contains_key(&peer) {
            paced.retain(|_, next| *next + PACE_MEMORY_MS > now);
            if paced.len() >= MAX_PACED_PEERS {
                paced.clear();
            }
        }
        paced.entry(peer).or_insert(now);
    }

    /// How long a new connection of `peer` waits before it is served: nothing unless the peer
    /// is paced, else until its next turn, one every [`ROOM_PACE`]; `None` when that is more
    /// than [`PACE_QUEUE`] away (the connection is closed at once). A peer stops being paced a
    /// second after its turns caught up with the clock.
    fn paced_start(&self, peer: IpAddr) -> Option<Duration> {
        let now = self.now_ms();
        let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
        let Some(next) = paced.get_mut(&peer) else {
            return Some(Duration::ZERO);
        };
        if *next + PACE_MEMORY_MS <= now {
            paced.remove(&peer);
            return Some(Duration::ZERO);
        }
        let start = (*next).max(now);
        let wait = Duration::from_millis(start - now);
        if wait > PACE_QUEUE {
            return None;
        }
        *next = start + ROOM_PACE.as_millis() as u64;
        Some(wait)
    }

    /// Closes connections idle past their deadline.
    fn sweep(&self, limits: &ConnectionLimits) {
        let now = self.now_ms();
        let fresh_limit = limits.header_timeout.as_millis() as u64;
        let idle_limit = limits.idle_timeout.as_millis() as u64;
        for c in self.lock().values() {
            // A client that reads nothing of its answer for this long gives up its connection
            // (and the request's ticket): an answer nobody reads must not stay in memory.
            let blocked = c.write_blocked_since.load(Ordering::Acquire);
            if blocked != 0 && now.saturating_sub(blocked - 1) >= UNREAD_LIMIT.as_millis() as u64 {
                c.forced.store(true, Ordering::Release);
                c.close.cancel();
                continue;
            }
            if c.busy.load(Ordering::Acquire) != 0 {
                continue;
            }
            let limit = if c.used.load(Ordering::Relaxed) {
                idle_limit
            } else {
                fresh_limit
            };
            if now.saturating_sub(c.idle_since.load(Ordering::Relaxed)) >= limit {
                c.close.cancel();
            }
        }
    }
}

/// The connection table of one listener, shared with whoever counts its connections (the
/// metrics).
#[derive(Clone)]
pub struct Connections(Arc<Table>);

impl Default for Connections {
    fn default() -> Self {
        Connections(Arc::new(Table::new()))
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Connections").field(&self.open()).finish()
    }
}

impl Connections {
    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.0.len()
    }
}

/// Marks its connection busy from a request's arrival until its response body is dropped.
struct Busy {
    connection: Arc<Connection>,
    table: Arc<Table>,
}

impl Busy {
    fn new(connection: &Arc<Connection>, table: &Arc<Table>) -> Busy {
        connection.used.store(true, Ordering::Relaxed);
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            connection: Arc::clone(connection),
            table: Arc::clone(table),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connection
            .idle_since
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.connection.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds `T` until it is finished or dropped: the connection's busy
/// mark here (a response stream is work in flight, not idleness), a request's in-flight
/// ticket in `inflight`.
pub(super) struct HoldingBody<T> {
    inner: Body,
    _held: T,
}

impl<T> HoldingBody<T> {
    pub(super) fn new(inner: Body, held: T) -> HoldingBody<T> {
        HoldingBody { inner, _held: held }
    }
}

impl<T: Unpin> hyper::body::Body for HoldingBody<T> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a write to a client may wait for it to read before the connection is closed.
const UNREAD_LIMIT: Duration = Duration::from_secs(10);

/// A connection's socket, noting when writes to it wait on the client (see
/// [`UNREAD_LIMIT`]).
struct Tracked {
    tcp: tokio::net::TcpStream,
    connection: Arc<Connection>,
    table: Arc<Table>,
}

impl Tracked {
    fn note<T>(&self, poll: Poll<T>) -> Poll<T> {
        let blocked = &self.connection.write_blocked_since;
        match poll {
            Poll::Pending => {
                if blocked.load(Ordering::Relaxed) == 0 {
                    blocked.store(self.table.now_ms() + 1, Ordering::Release);
                }
            }
            Poll::Ready(_) => {
                if blocked.load(Ordering::Relaxed) != 0 {
                    blocked.store(0, Ordering::Release);
                }
            }
        }
        poll
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Bytes one connection may buffer while its request head arrives.
const MAX_HEADER_BUFFER: usize = 64 * 1024;

/// A peer whose refused connections are closed to make room is served at most one new
/// connection per this long (500 a second); other peers are not slowed.
const ROOM_PACE: Duration = Duration::from_millis(2);
/// How far ahead a paced peer's connections may queue; beyond, they are closed at once.
const PACE_QUEUE: Duration = Duration::from_secs(1);
/// How long after its turns caught up a peer stays paced.
const PACE_MEMORY_MS: u64 = 1_000;
/// Paced peers remembered at once.
const MAX_PACED_PEERS: usize = 4_096;

/// Serves `app` on `listener` until `shutdown` is cancelled, within `limits`, keeping its
/// connections in the given table (where the metrics count them). Requests carry the peer's
/// address as `ConnectInfo<SocketAddr>`, which the guard checks against `allowed_ips`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    (limits, Connections(table)): (ConnectionLimits, Connections),
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // HTTP/1.1 only: MCP clients speak it, and HTTP/2's many streams per connection would
    // multiply what one connection can hold in flight.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // What one connection may buffer of unfinished headers (hyper's default is ~400 KiB:
        // a thousand connections sending headers slowly took half a GiB).
        .max_buf_size(MAX_HEADER_BUFFER);
    let builder = Arc::new(builder);
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut last_accept_error: Option<Instant> = None;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                table.sweep(&limits);
                while tasks.try_join_next().is_some() {}
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (or a transient error): make room by closing the
                    // longest-idle connection, and do not spin.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!("accepting a connection failed: {e}");
                        last_accept_error = Some(Instant::now());
                    }
                    let evicted = table.make_room(limits.max_connections) != Room::None;
                    let pause = if evicted { 1 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        if table.len() >= limits.max_connections && table.open_count() >= limits.max_connections {
            let room = table.make_room(limits.max_connections);
            if let Room::FromRefused(refused) = room {
                // The connection closed was waiting for its refusal, and a client whose
                // refused requests are closed early would retry at once: a loop as fast as
                // the server accepts. That peer's connections are paced (and only its: a
                // pause here held up every new client behind the flood).
                table.pace(refused);
            }
            if room == Room::None {
                tracing::debug!(%peer, "refusing a connection: every connection is busy and counted");
                drop(tcp);
                continue;
            }
        }
        let peer_key = crate::rules::cidr::peer_key(peer.ip());
        let Some(paced) = table.paced_start(peer_key) else {
            tracing::debug!(%peer, "closing a connection: its address retries refused requests");
            drop(tcp);
            continue;
        };
        let (id, connection) = table.insert(peer_key);
        let app = app.clone();
        let table = Arc::clone(&table);
        let builder = Arc::clone(&builder);
        let stop = shutdown.clone();
        // Polled again at once when it wakes itself (most requests do), instead of being
        // handed to the other worker thread: see `repoll`.
        tasks.spawn(Repoll::new(async move {
            if !paced.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(paced) => {}
                    _ = connection.close.cancelled() => {
                        table.remove(id);
                        return;
                    }
                }
            }
            let service = {
                let connection = Arc::clone(&connection);
                let table = Arc::clone(&table);
                hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    let busy = Busy::new(&connection, &table);
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                        .extensions_mut()
                        .insert(Shield(Arc::clone(&connection)));
                    let response = app.clone().oneshot(request.map(Body::new));
                    async move {
                        let response: Response<Body> = match response.await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        Ok::<_, Infallible>(response.map(|inner| HoldingBody::new(inner, busy)))
                    }
                })
            };
            let io = Tracked {
                tcp,
                connection: Arc::clone(&connection),
                table: Arc::clone(&table),
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => log_connection_end(result),
                _ = connection.close.cancelled() => {
                    // Chosen because nothing was in flight (or nothing counted, when forced):
                    // drop it at once (a graceful shutdown would wait for a half-sent
                    // request's headers). If a request started since, let it finish first.
                    if !connection.forced.load(Ordering::Acquire)
                        && connection.busy.load(Ordering::Acquire) != 0
                    {
                        conn.as_mut().graceful_shutdown();
                        log_connection_end(conn.await);
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            table.remove(id);
        }));
    }
    // Let open connections finish (their streams are ended by the MCP service's own shutdown).
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}
