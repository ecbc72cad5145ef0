//! A POST's reply written in one piece when it is ready at once.
//!
//! rmcp answers a POST of a session (protocols before 2026-07-28) with an event stream that it
//! returns before the handler has run, so hyper writes the status line and headers alone and
//! the reply's event in a second write: two segments, and two wake-ups of the client, for every
//! request. Holding the response until its first event (at most [`HOLD`]) and taking whatever
//! else is ready with it lets a reply that is complete by then go out as one body with a
//! `Content-Length`, in one write. A reply still running after [`HOLD`] (a slow gateway tool),
//! or one whose stream goes on after its first events (progress), is streamed as before, its
//! first events included.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio_stream::{Stream, StreamExt};

/// How long a reply is held for its first event before its headers are written alone.
const HOLD: Duration = Duration::from_millis(20);

/// The `/mcp` layer: a POST answered with an event stream is [`coalesce`]d; anything else
/// passes unchanged (GET streams are long-lived by nature).
pub(super) async fn whole_replies(request: Request, next: Next) -> Response {
    let is_post = request.method() == Method::POST;
    let response = next.run(request).await;
    // A body of known length (the express lane's) is whole already.
    if is_post
        && is_event_stream(&response)
        && axum::body::HttpBody::size_hint(response.body())
            .exact()
            .is_none()
    {
        coalesce(response).await
    } else {
        response
    }
}

pub(super) fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

pub(super) async fn coalesce(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut ready: Vec<Bytes> = Vec::new();
    // The first event, waited for; then whatever is ready without waiting.
    let first = match tokio::time::timeout(HOLD, stream.next()).await {
        Ok(first) => first,
        Err(_) => return Response::from_parts(parts, Body::from_stream(stream)),
    };
    let mut next = first;
    loop {
        match next {
            None => {
                // Complete: one body of known length (hyper writes it with the headers).
                let whole: Bytes = match ready.len() {
                    1 => ready.pop().expect("one chunk"),
                    _ => ready.concat().into(),
                };
                return Response::from_parts(parts, Body::from(whole));
            }
            Some(Ok(chunk)) => ready.push(chunk),
            Some(Err(error)) => {
                let rest = tokio_stream::iter(ready.into_iter().map(Ok))
                    .chain(tokio_stream::once(Err(error)));
                return Response::from_parts(parts, Body::from_stream(rest));
            }
        }
        next = match poll_fn(|cx| Poll::Ready(Pin::new(&mut stream).poll_next(cx))).await {
            Poll::Ready(next) => next,
            Poll::Pending => {
                let rest = tokio_stream::iter(ready.into_iter().map(Ok)).chain(stream);
                return Response::from_parts(parts, Body::from_stream(rest));
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::HttpBody;

    fn sse(body: Body) -> Response {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .expect("valid response")
    }

    #[tokio::test]
    async fn a_reply_ready_at_once_has_a_length() {
        let events = tokio_stream::iter(
            ["data: {\"id\":1}\n\n", ""]
                .map(|s| Ok::<_, std::io::Error>(Bytes::from_static(s.as_bytes()))),
        );
        let response = coalesce(sse(Body::from_stream(events))).await;
        assert_eq!(response.body().size_hint().exact(), Some(16));
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"data: {\"id\":1}\n\n");
    }

    type Events = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

    /// An event-stream reply whose events the test sends, already run through `coalesce`.
    async fn fed_reply(first: Option<&'static [u8]>) -> (Events, Response) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if let Some(first) = first {
            tx.send(Ok(Bytes::from_static(first))).await.unwrap();
        }
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        (tx, coalesce(sse(body)).await)
    }

    /// Sends the last event, ends the stream, and reads the whole reply.
    async fn finish(tx: Events, last: &'static [u8], response: Response) -> Bytes {
        tx.send(Ok(Bytes::from_static(last))).await.unwrap();
        drop(tx);
        axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_reply_that_goes_on_is_streamed_from_its_first_event() {
        let (tx, response) = fed_reply(Some(b"data: progress\n\n")).await;
        assert_eq!(response.body().size_hint().exact(), None);
        let bytes = finish(tx, b"data: done\n\n", response).await;
        assert_eq!(&bytes[..], b"data: progress\n\ndata: done\n\n");
    }

    #[tokio::test]
    async fn a_slow_reply_gets_its_headers_after_the_hold() {
        let (tx, response) = fed_reply(None).await;
        assert_eq!(response.body().size_hint().exact(), None);
        let bytes = finish(tx, b"data: late\n\n", response).await;
        assert_eq!(&bytes[..], b"data: late\n\n");
    }
}
