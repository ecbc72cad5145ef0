//! The command line's side of the admin socket: blocking, one connection per command, one
//! request and its answer at a time.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{Command, Request, Response, SOCKET_FILE};
use crate::cli::CliError;

/// How long the command waits for each answer line before giving up on the server. Generous:
/// management calls flush to disk, and a large export sends many lines, each well within it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest answer line read: far above any page of records (100 records of at most a few
/// KiB each) or export chunk, but a bound all the same.
const MAX_ANSWER_LINE: u64 = 64 * 1024 * 1024;

pub struct AdminClient {
    /// Read and written through one buffered reader; `RefCell` because a command holds its
    /// owner by shared reference while it makes several calls (pages, get then revoke).
    stream: RefCell<BufReader<UnixStream>>,
    environment: String,
}

impl AdminClient {
    /// Connects to the admin socket in `dir`; `environment` goes with every request.
    pub fn connect(dir: &Path, environment: &str) -> io::Result<AdminClient> {
        let stream = UnixStream::connect(dir.join(SOCKET_FILE))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(AdminClient {
            stream: RefCell::new(BufReader::new(stream)),
            environment: environment.to_owned(),
        })
    }

    /// Sends a request and returns its result, or its error as the command's own.
    pub fn request(&self, request: Request) -> Result<Value, CliError> {
        self.send(request)?;
        match self.receive()? {
            Response::Result(value) => Ok(value),
            Response::Error(e) => Err(e.into()),
            Response::Chunk(_) => Err(protocol_error("a chunk where a result was due")),
        }
    }

    /// Asks for an export and writes its chunks to `out` as they come, so the command holds
    /// one chunk at a time; returns the number of entries.
    pub fn export(&self, out: &mut dyn Write) -> Result<u64, CliError> {
        self.send(Request::command(Command::Export, Value::Null))?;
        loop {
            match self.receive()? {
                Response::Chunk(text) => {
                    let bytes = STANDARD
                        .decode(text)
                        .map_err(|_| protocol_error("an export chunk that is not base64"))?;
                    out.write_all(&bytes).map_err(output_error)?;
                }
                Response::Result(done) => {
                    out.flush().map_err(output_error)?;
                    return done["entries"]
                        .as_u64()
                        .ok_or_else(|| protocol_error("an export result without its entries"));
                }
                Response::Error(e) => return Err(e.into()),
            }
        }
    }

    fn send(&self, mut request: Request) -> Result<(), CliError> {
        request.environment = Some(self.environment.clone());
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| CliError::new(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        let mut stream = self.stream.borrow_mut();
        stream.get_mut().write_all(&line).map_err(socket_error)
    }

    fn receive(&self) -> Result<Response, CliError> {
        let mut stream = self.stream.borrow_mut();
        let mut line = Vec::new();
        let read = (&mut *stream)
            .take(MAX_ANSWER_LINE)
            .read_until(b'\n', &mut line)
            .map_err(socket_error)?;
        if read == 0 {
            return Err(CliError::new(
                "the running server closed its admin socket without answering (is it stopping?)",
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(protocol_error("an answer that never ends"));
        }
        serde_json::from_slice(&line).map_err(|_| protocol_error("an answer that is not one"))
    }
}

fn socket_error(e: io::Error) -> CliError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CliError::new(format!(
            "the running server did not answer on its admin socket within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
        _ => CliError::new(format!("the running server's admin socket failed: {e}")),
    }
}

/// Worded as the offline export words a failed write, so both paths fail alike.
fn output_error(e: io::Error) -> CliError {
    CliError::new(format!("I/O error: {e}"))
}

fn protocol_error(what: &str) -> CliError {
    CliError::new(format!(
        "the running server sent {what} on its admin socket (is it the same tokenwarden version?)"
    ))
}
