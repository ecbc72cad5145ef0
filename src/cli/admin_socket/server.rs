//! The server's side of the admin socket: `admin.sock` in the data directory, owner-only, for
//! as long as `serve` holds the database. Each connection is served one request at a time by
//! [`crate::cli::owner::answer`], the code a command runs when it opens the store itself.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Command, EXPORT_CHUNK, MAX_REQUEST_LINE, Request, Response, SOCKET_FILE};
use crate::cli::CliError;
use crate::service::Service;

/// Connections served at once; more wait in the listen backlog. Each runs one request at a
/// time, so this also bounds the requests handled at once.
const MAX_CONNECTIONS: usize = 8;

/// A connection that sends no request for this long is closed, so a forgotten client cannot
/// keep one of the few slots.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that does not take an answer line within this long is dropped (and a running
/// export stops), for the same reason.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Export chunks buffered between the export (a blocking task) and the socket.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 4;

/// A bound admin socket; the file is removed when this is dropped.
pub struct AdminSocket {
    listener: UnixListener,
    _file: SocketFile,
    service: Arc<Service>,
    environment: String,
}

/// Removes the socket file when the server stops. The server still holds the database lock
/// then, so the file it removes can only be its own.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl AdminSocket {
    /// Binds `admin.sock` in `dir`, mode 0600. Call only while holding the database: a socket
    /// file found there then belongs to a server that is gone (it held the lock while it
    /// lived), so it is removed rather than refused.
    pub fn bind(dir: &Path, service: Arc<Service>, environment: &str) -> io::Result<AdminSocket> {
        let path = dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        let file = SocketFile(path);
        // bind(2) gives sockets 0777 minus the umask (main's 0077 leaves 0700); connecting
        // needs only read and write.
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o600))?;
        Ok(AdminSocket {
            listener,
            _file: file,
            service,
            environment: environment.to_owned(),
        })
    }

    /// Accepts connections until `shutdown`, then closes the ones still open and removes the
    /// socket file.
    pub async fn serve(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                _ = shutdown.cancelled() => break,
            };
            let Ok(slot) = slot else { break };
            let stream = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            while connections.try_join_next().is_some() {}
            match stream {
                Ok((stream, _)) => {
                    let service = Arc::clone(&self.service);
                    let environment = self.environment.clone();
                    connections.spawn(connection(stream, service, environment, slot));
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    tracing::warn!("admin socket: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        connections.shutdown().await;
    }
}

/// The user this process runs as: the only one the socket serves.
fn own_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

async fn connection(
    stream: UnixStream,
    service: Arc<Service>,
    environment: String,
    _slot: OwnedSemaphorePermit,
) {
    let peer = stream.peer_cred().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    match peer {
        Ok(uid) if uid == own_uid() => {}
        peer => {
            match peer {
                Ok(uid) => tracing::warn!("admin socket: refused a connection from uid {uid}"),
                Err(e) => tracing::warn!("admin socket: refused a connection of unknown uid: {e}"),
            }
            let refusal = CliError::from(crate::error::Error::forbidden(
                "the admin socket serves only the user the server runs as",
            ));
            let _ = send(&mut write, &Response::error(&refusal)).await;
            close_gently(read, write).await;
            return;
        }
    }
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_LINE as u64);
        match tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') {
            // Too long, or cut off by the client: either way nothing more can be read in step.
            let error = invalid(format!(
                "a request is one JSON line of at most {} bytes",
                MAX_REQUEST_LINE
            ));
            let _ = send(&mut write, &Response::error(&error)).await;
            close_gently(reader, write).await;
            return;
        }
        let answered = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => handle(request, &service, &environment, &mut write).await,
            Err(e) => {
                let error = invalid(format!("not a request: {e}"));
                send(&mut write, &Response::error(&error)).await
            }
        };
        if answered.is_err() {
            return;
        }
    }
}

/// Ends a connection after a final error answer. Closing a Unix socket with the peer's bytes
/// still unread resets it, and the peer would lose the answer it has not read yet: so stop
/// writing and discard what it still sends (at most a line's worth, for at most a second)
/// until it hangs up.
async fn close_gently(read: impl tokio::io::AsyncRead + Unpin, mut write: OwnedWriteHalf) {
    let _ = write.shutdown().await;
    let (mut rest, mut nowhere) = (read.take(MAX_REQUEST_LINE as u64), tokio::io::sink());
    let drained = tokio::io::copy(&mut rest, &mut nowhere);
    let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
}

fn invalid(message: String) -> CliError {
    CliError::from(crate::error::Error::invalid(message))
}

async fn handle(
    request: Request,
    service: &Arc<Service>,
    environment: &str,
    write: &mut OwnedWriteHalf,
) -> io::Result<()> {
    if let Some(asked) = &request.environment
        && asked != environment
    {
        let error = CliError::usage(format!(
            "the running server serves environment {environment:?}, not {asked:?}: pass \
             --environment {environment:?}",
        ));
        return send(write, &Response::error(&error)).await;
    }
    if request.command == Some(Command::Export) && request.tool.is_none() {
        return export(service, write).await;
    }
    let service = Arc::clone(service);
    // The service writes and flushes to disk: off the async threads.
    let answer = tokio::task::spawn_blocking(move || crate::cli::owner::answer(&service, &request));
    let response = match answer.await {
        Ok(Ok(value)) => Response::Result(value),
        Ok(Err(e)) => Response::error(&e),
        Err(e) => Response::error(&CliError::new(format!("the request failed: {e}"))),
    };
    send(write, &response).await
}

/// Streams [`Service::export`]'s output as chunks while it is written, then its entry count.
async fn export(service: &Arc<Service>, write: &mut OwnedWriteHalf) -> io::Result<()> {
    let (chunks, mut received) = mpsc::channel(EXPORT_CHUNKS_IN_FLIGHT);
    let service = Arc::clone(service);
    let exporting = tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            pending: Vec::with_capacity(EXPORT_CHUNK),
            chunks,
        };
        service.export(&mut writer)
    });
    let mut sent = Ok(());
    while let Some(chunk) = received.recv().await {
        sent = send(write, &Response::Chunk(STANDARD.encode(chunk))).await;
        if sent.is_err() {
            // Dropping the receiver makes the export's next write fail, which ends it.
            break;
        }
    }
    drop(received);
    let outcome = exporting.await;
    sent?;
    let response = match outcome {
        Ok(Ok(entries)) => Response::Result(serde_json::json!({ "entries": entries })),
        Ok(Err(e)) => Response::error(&CliError::from(e)),
        Err(e) => Response::error(&CliError::new(format!("the export failed: {e}"))),
    };
    send(write, &response).await
}

/// `export`'s output cut into chunks of [`EXPORT_CHUNK`] bytes, handed to the socket's task
/// through a bounded channel: the export waits while the client is slow, and never more than a
/// few chunks are held.
struct ChunkWriter {
    pending: Vec<u8>,
    chunks: mpsc::Sender<Vec<u8>>,
}

impl ChunkWriter {
    fn hand_over(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = EXPORT_CHUNK - self.pending.len();
        let taken = bytes.len().min(room);
        self.pending.extend_from_slice(&bytes[..taken]);
        if self.pending.len() == EXPORT_CHUNK {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(EXPORT_CHUNK));
            self.hand_over(full)?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.pending);
        self.hand_over(rest)
    }
}

/// Writes one answer line, within [`WRITE_TIMEOUT`].
async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&line)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no answer",
        )),
    }
}
