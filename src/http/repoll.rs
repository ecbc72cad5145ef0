//! A connection's task polled again at once when it wakes itself.
//!
//! Much of what a connection does wakes the connection's own task while that task runs: the
//! handler asks hyper for the request body (hyper's half is woken), hyper hands it over (the
//! handler's half is woken), a call to an upstream hands its request to the connection that
//! writes it and gets its answer back the same way. Tokio treats a task woken during its own
//! poll as one that yielded: it goes to the back of the run queue and an idle worker thread is
//! woken to take it, so every such wake-up costs two context switches and moves the request to
//! the other core, whose caches do not hold it. [`Repoll`] gives the future a waker of its own:
//! a wake during the poll only marks it, and the future is polled again straight away (a few
//! times at most, then the wake goes to tokio as usual, so a future that keeps waking itself
//! still yields). A wake from anywhere else (a socket became readable, a timer) goes to the
//! task as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// How many times one poll of the task polls the future again for its own wakes.
const REPOLLS: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Wraps `future`; see the module's documentation.
pub struct Repoll<F> {
    future: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While the future is being polled, mark it: the poll looks at the mark when the
        // future returns. The exchange fails only if that poll ended in between: then the
        // mark would be missed, so the task is woken.
        if self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return;
        }
        if self.state.load(Ordering::Acquire) == WOKEN {
            return;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Repoll<F> {
    pub fn new(future: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&shared));
        Repoll {
            future: Box::pin(future),
            shared,
            waker,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this.shared.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..=REPOLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.future.as_mut().poll(&mut inner) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            if this.shared.state.swap(IDLE, Ordering::AcqRel) != WOKEN {
                return Poll::Pending;
            }
        }
        // It keeps waking itself: let the scheduler decide when it runs again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes that reach the task.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself `times` times while polled, then is ready.
    struct SelfWaking {
        times: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn task() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_waking_the_task() {
        let (counter, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(Repoll::new(SelfWaking { times: 3, polls: 0 }));
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready(4));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields_to_the_scheduler() {
        let (counter, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(Repoll::new(SelfWaking {
            times: 100,
            polls: 0
        }));
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(future.future.polls, REPOLLS + 1);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the task must be woken"
        );
    }

    #[test]
    fn wakes_from_outside_a_poll_reach_the_task() {
        let (counter, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut future = std::pin::pin!(Repoll::new(rx));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        let sender = std::thread::spawn(move || tx.send(7));
        sender.join().unwrap().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_under_a_race() {
        // A wake racing the end of a poll must either be seen by the poll or reach the task.
        for _ in 0..2_000 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let sender = tokio::spawn(async move {
                tokio::task::yield_now().await;
                let _ = tx.send(());
            });
            tokio::time::timeout(std::time::Duration::from_secs(5), Repoll::new(rx))
                .await
                .expect("a lost wake would hang here")
                .unwrap();
            sender.await.unwrap();
        }
    }
}
