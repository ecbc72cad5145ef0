//! Upstream answers larger than the gateway reads (16 MiB, SPEC §16) fail their call at once
//! with `upstream_result_too_large`, on stdio and HTTP alike.
//!
//! rmcp's stdio transport drops an over-long line and logs it, so the call it answered would
//! wait for its timeout. [`LineCap`] sits between the child's stdout and rmcp: it hands rmcp
//! whole lines of at most [`MAX_RESULT_BYTES`], and turns a longer line into a JSON-RPC error
//! answering the same request id (found by [`IdScanner`] while the rest of the line is
//! skipped, never held). [`failure`] recognises that error, and HTTP answers over the limit
//! get the same [`CallFailure::TooLarge`].

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rmcp::model::ErrorData;
use tokio::io::{AsyncRead, ReadBuf};

use super::connection::CallFailure;

/// The largest upstream answer (one JSON-RPC message) the gateway reads.
pub const MAX_RESULT_BYTES: usize = 16 << 20;
/// The JSON-RPC error code of the answer standing in for an oversized one.
const TOO_LARGE_CODE: i32 = -32001;
/// Its `data`, which tells it from an upstream's own error with the same code.
const TOO_LARGE_MARK: &str = "tokenwarden:upstream_result_too_large";

/// What a call whose answer was over the limit fails with.
pub fn too_large() -> CallFailure {
    CallFailure::TooLarge(format!(
        "the upstream's answer is larger than {} MiB",
        MAX_RESULT_BYTES >> 20
    ))
}

/// An upstream's JSON-RPC error as a call failure: the stand-in for an oversized answer, or
/// the upstream's own error.
pub fn failure(error: ErrorData) -> CallFailure {
    let marked = error.code.0 == TOO_LARGE_CODE
        && error
            .data
            .as_ref()
            .is_some_and(|d| d.as_str() == Some(TOO_LARGE_MARK));
    if marked {
        too_large()
    } else {
        CallFailure::Upstream(error)
    }
}

/// The line standing in for an oversized answer to request `id` (raw JSON).
pub(super) fn stand_in(id: &str) -> Vec<u8> {
    let mut line = serde_json::json!({
        "jsonrpc": "2.0",
        "id": serde_json::from_str::<serde_json::Value>(id).unwrap_or_default(),
        "error": {
            "code": TOO_LARGE_CODE,
            "message": "the upstream's answer is too large",
            "data": TOO_LARGE_MARK,
        },
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// An upstream's stdout as rmcp reads it: whole lines of at most `limit` bytes.
pub struct LineCap<R> {
    inner: R,
    limit: usize,
    /// The line being read, until its newline.
    line: Vec<u8>,
    /// Whole lines ready for rmcp, and how far rmcp has read them.
    ready: Vec<u8>,
    given: usize,
    /// Set while the rest of an oversized line is skipped.
    skipping: Option<IdScanner>,
    chunk: Box<[u8]>,
}

impl<R> LineCap<R> {
    pub fn new(inner: R, limit: usize) -> LineCap<R> {
        LineCap {
            inner,
            limit,
            line: Vec::new(),
            ready: Vec::new(),
            given: 0,
            skipping: None,
            chunk: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }

    fn take_in(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (part, ended) = match newline {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            bytes = &bytes[part.len() + usize::from(ended)..];
            if let Some(scanner) = &mut self.skipping {
                // Once it knows what the line answers, the rest is only looked through for
                // its end.
                if !scanner.settled() {
                    scanner.feed(part);
                }
            } else if self.line.len() + part.len() > self.limit {
                let mut scanner = IdScanner::default();
                scanner.feed(&self.line);
                scanner.feed(part);
                self.line = Vec::new();
                self.skipping = Some(scanner);
            } else {
                self.line.extend_from_slice(part);
            }
            if !ended {
                continue;
            }
            match self.skipping.take() {
                Some(scanner) => match scanner.answered_id() {
                    Some(id) => {
                        tracing::warn!(target: "upstream",
                            "an answer over {} MiB was refused", self.limit >> 20);
                        self.ready.extend_from_slice(&stand_in(&id));
                    }
                    None => tracing::warn!(target: "upstream",
                        "a message over {} MiB that answers no request was dropped",
                        self.limit >> 20),
                },
                None => {
                    self.ready.extend_from_slice(&self.line);
                    self.ready.push(b'\n');
                    self.line.clear();
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineCap<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.given < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.given);
                buf.put_slice(&this.ready[this.given..this.given + n]);
                this.given += n;
                if this.given == this.ready.len() {
                    this.ready.clear();
                    this.given = 0;
                    // One large answer must not keep its 16 MiB per upstream for good.
                    if this.ready.capacity() > 1 << 20 {
                        this.ready = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let filled = chunk.filled().len();
            if filled == 0 {
                // End of stream: an unfinished line is no message.
                return Poll::Ready(Ok(()));
            }
            let chunk = std::mem::take(&mut this.chunk);
            this.take_in(&chunk[..filled]);
            this.chunk = chunk;
            if this.line.capacity() > 1 << 20 && this.line.is_empty() {
                this.line = Vec::new();
            }
        }
    }
}

/// Finds the top-level `"id"` of a JSON object read piece by piece, and whether it has a
/// top-level `"method"` (a request or notification, which answers nothing).
#[derive(Default)]
pub struct IdScanner {
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The key being read (its first bytes), and the last key read.
    key: Option<Vec<u8>>,
    last_key: Vec<u8>,
    /// The raw value of `"id"` being read, then read.
    reading_id: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    has_method: bool,
    /// A top-level `"result"` or `"error"` key was read.
    has_outcome: bool,
}

/// Longer ids are not believed.
const MAX_ID_BYTES: usize = 256;

impl IdScanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(value) = &mut self.reading_id
                && value.len() <= MAX_ID_BYTES
            {
                value.push(b);
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if let Some(key) = self.key.take() {
                        self.has_method |= key == b"method";
                        self.has_outcome |= key == b"result" || key == b"error";
                        self.last_key = key;
                    }
                } else if let Some(key) = &mut self.key
                    && key.len() < 16
                {
                    key.push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.key = Some(Vec::new());
                    }
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    self.expect_key = self.depth == 1 && b == b'{';
                }
                b'}' | b']' => {
                    if self.depth == 1 {
                        self.finish_id();
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                b',' if self.depth == 1 => {
                    self.finish_id();
                    self.expect_key = true;
                }
                b':' if self.depth == 1 => {
                    self.expect_key = false;
                    if self.last_key == b"id" {
                        self.reading_id = Some(Vec::new());
                    }
                }
                _ => {}
            }
        }
    }

    fn finish_id(&mut self) {
        if let Some(mut value) = self.reading_id.take() {
            value.pop(); // the ',' or '}' that ended it
            self.id = Some(value);
        }
    }

    /// Whether more bytes cannot change [`IdScanner::answered_id`]: a request or
    /// notification, or an answer whose id has been read. (A second top-level `"method"` or
    /// `"id"` would make the line invalid JSON-RPC, which answers nothing anyway.)
    pub fn settled(&self) -> bool {
        self.has_method || (self.id.is_some() && self.has_outcome)
    }

    /// The id this message answers: a top-level `"id"` that is a string or a number, in a
    /// message without a `"method"`.
    pub fn answered_id(&self) -> Option<String> {
        if self.has_method {
            return None;
        }
        let raw = std::str::from_utf8(self.id.as_deref()?).ok()?.trim();
        match serde_json::from_str::<serde_json::Value>(raw).ok()? {
            serde_json::Value::String(_) | serde_json::Value::Number(_) => Some(raw.to_owned()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn scan(text: &str) -> Option<String> {
        let mut scanner = IdScanner::default();
        for piece in text.as_bytes().chunks(3) {
            scanner.feed(piece);
        }
        scanner.answered_id()
    }

    #[test]
    fn the_scanner_finds_the_top_level_id_wherever_it_is() {
        assert_eq!(
            scan(r#"{"jsonrpc":"2.0","id":7,"result":{"id":"inner"}}"#),
            Some("7".into())
        );
        assert_eq!(
            scan(r#"{"result":{"id":1,"x":"\"id\":2"},"id" : "abc" }"#),
            Some("\"abc\"".into())
        );
        assert_eq!(
            scan(r#"{"result":["id",{"id":3}],"jsonrpc":"2.0","id":"a\"b"}"#),
            Some(r#""a\"b""#.into())
        );
        // Requests and notifications answer nothing; odd ids are not believed.
        assert_eq!(scan(r#"{"id":1,"method":"ping"}"#), None);
        assert_eq!(scan(r#"{"method":"notifications/progress"}"#), None);
        assert_eq!(scan(r#"{"id":{"a":1},"result":{}}"#), None);
        assert_eq!(scan(r#"{"result":{}}"#), None);
    }

    async fn through(input: Vec<u8>, limit: usize) -> String {
        let mut cap = LineCap::new(&input[..], limit);
        let mut out = String::new();
        cap.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn lines_within_the_limit_pass_and_longer_answers_become_errors() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{{\"text\":\"{}\"}}}}\n",
            "x".repeat(300)
        );
        let input = format!("{{\"a\":1}}\n{big}{{\"b\":2}}\n");
        let out = through(input.into_bytes(), 100).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], r#"{"a":1}"#);
        let stand_in: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(stand_in["id"], 5);
        let error: ErrorData = serde_json::from_value(stand_in["error"].clone()).unwrap();
        assert!(matches!(failure(error), CallFailure::TooLarge(_)));
        assert_eq!(lines[2], r#"{"b":2}"#);
        // An oversized notification is dropped.
        let flood = format!(
            "{{\"method\":\"x\",\"params\":\"{}\"}}\nok\n",
            "y".repeat(300)
        );
        assert_eq!(through(flood.into_bytes(), 100).await, "ok\n");
    }
}
