//! Progress from an upstream to the calling client, bounded (SPEC §16): at most
//! [`PER_SECOND`] notifications per call, coalesced so the latest wins, and never more than one
//! waiting. An upstream that floods progress, or a client that does not read, costs one slot
//! per call, and never stalls the upstream's other calls: offering a notification never waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::ProgressNotificationParam;
use tokio::sync::Notify;

use super::connection::ProgressSink;

/// The most progress notifications forwarded per call and second.
pub const PER_SECOND: u32 = 20;
const SPACING: Duration = Duration::from_millis(1000 / PER_SECOND as u64);
/// How long one notification may wait for a client that does not read before it is dropped.
const SEND_DEADLINE: Duration = Duration::from_secs(1);

/// One call's progress forwarder: a task sending the latest notification offered, spaced at
/// least [`SPACING`] apart. Stops (dropping what waits) when the call ends.
pub struct Progress {
    latest: Arc<Mutex<Option<ProgressNotificationParam>>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(sink: ProgressSink) -> Progress {
        let latest: Arc<Mutex<Option<ProgressNotificationParam>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn({
            let latest = Arc::clone(&latest);
            let wake = Arc::clone(&wake);
            async move {
                loop {
                    wake.notified().await;
                    let next = latest.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let Some(mut note) = next else { continue };
                    note.progress_token = sink.token.clone();
                    // A client that does not read loses notifications, not memory.
                    let _ =
                        tokio::time::timeout(SEND_DEADLINE, sink.peer.notify_progress(note)).await;
                    tokio::time::sleep(SPACING).await;
                }
            }
        });
        Progress { latest, wake, task }
    }

    /// Offers the upstream's latest notification; replaces one not yet sent. Never waits.
    pub fn offer(&self, note: ProgressNotificationParam) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(note);
        self.wake.notify_one();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
