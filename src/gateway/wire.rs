//! HTTP/1.1 to an upstream, driven by the task that makes the call.
//!
//! A pooled client (reqwest's) runs each connection in a task of its own: a request crosses to
//! it and the answer back, two thread hand-offs per call on top of the calling task's own. Here
//! the calling task takes a kept-alive connection from a small pool and polls it itself while
//! it writes the request and reads the answer (hyper's connection-level client), then puts it
//! back. A connection idle for [`IDLE`] is not reused: servers close idle connections after a
//! few seconds (Node after 5), and a request written as they close would be lost.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection idle this long is closed instead of reused.
const IDLE: Duration = Duration::from_secs(3);

type Io = TokioIo<TcpStream>;

/// One kept-alive connection: the handle requests go through, and the connection itself,
/// which only makes progress while someone polls it.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection<Io, Full<Bytes>>>>,
    idle_since: Instant,
}

/// Why a request got no answer.
pub enum Failure {
    /// Nothing was sent: another connection may carry the request.
    NotSent(String),
    /// The request was (or may have been) sent.
    Lost(String),
}

impl Conn {
    /// A new connection to `url`'s host and port.
    pub async fn open(url: &reqwest::Url) -> Result<Conn, String> {
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = match url.host() {
            Some(url::Host::Domain(name)) => TcpStream::connect((name, port)).await,
            Some(url::Host::Ipv4(ip)) => TcpStream::connect((ip, port)).await,
            Some(url::Host::Ipv6(ip)) => TcpStream::connect((ip, port)).await,
            None => return Err("the upstream URL has no host".into()),
        }
        .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        Ok(Conn {
            sender,
            conn: Box::pin(conn),
            idle_since: Instant::now(),
        })
    }
}

/// Runs `work` while polling `conn`, which is what moves the connection's bytes.
async fn drive<T>(
    conn: &mut Pin<Box<Connection<Io, Full<Bytes>>>>,
    work: impl Future<Output = T>,
) -> Result<T, String> {
    let mut work = std::pin::pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match conn.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => {
                // Closed; what it delivered before closing may have finished the work.
                match work.as_mut().poll(cx) {
                    Poll::Ready(out) => Poll::Ready(Ok(out)),
                    Poll::Pending => Poll::Ready(Err("the connection closed".to_owned())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("the connection broke: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl Conn {
    /// Sends `request` and returns the connection with the answer's head; its body is read
    /// with [`Conn::frame`].
    pub async fn send(
        mut self,
        request: axum::http::Request<Full<Bytes>>,
    ) -> Result<(Conn, axum::http::Response<Incoming>), Failure> {
        let sender = &mut self.sender;
        let ready = poll_fn(|cx| sender.poll_ready(cx));
        match drive(&mut self.conn, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::NotSent(e.to_string())),
            Err(e) => return Err(Failure::NotSent(e)),
        }
        let mut sending = std::pin::pin!(self.sender.try_send_request(request));
        let outcome = match drive(&mut self.conn, sending.as_mut()).await {
            Ok(outcome) => outcome,
            Err(why) => {
                // The connection ended first: with it gone, hyper hands back a request it
                // never wrote.
                drop(self.conn);
                return Err(match sending.await {
                    Err(mut e) => {
                        let error = format!("{}", e.error());
                        if e.take_message().is_some() {
                            Failure::NotSent(error)
                        } else {
                            Failure::Lost(error)
                        }
                    }
                    Ok(_) => Failure::Lost(why),
                });
            }
        };
        match outcome {
            Ok(response) => Ok((self, response)),
            Err(mut e) => {
                let why = format!("{}", e.error());
                Err(if e.take_message().is_some() {
                    Failure::NotSent(why)
                } else {
                    Failure::Lost(why)
                })
            }
        }
    }

    /// The next data of `body`, `None` at its end.
    pub async fn frame(&mut self, body: &mut Incoming) -> Result<Option<Bytes>, String> {
        loop {
            match drive(&mut self.conn, body.frame()).await? {
                None => return Ok(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(format!("the answer broke off: {e}")),
            }
        }
    }
}

/// The kept-alive connections to one upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// A connection to `url`: a kept-alive one if one is fit, else a new one.
    pub async fn take(&self, url: &reqwest::Url) -> Result<Conn, String> {
        loop {
            let Some(mut conn) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                return Conn::open(url).await;
            };
            if conn.idle_since.elapsed() >= IDLE || conn.sender.is_closed() {
                continue;
            }
            // A close the server already sent shows up when the connection is polled once.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            if conn.conn.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            return Ok(conn);
        }
    }

    /// Puts back a connection whose last answer was read to its end.
    pub fn give_back(&self, mut conn: Conn, limit: usize) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Connections that idled too long are closed here, not kept until taken.
        idle.retain(|c| c.idle_since.elapsed() < IDLE);
        if idle.len() < limit {
            idle.push(conn);
        }
    }
}
