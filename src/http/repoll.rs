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

/// `Shared::state` bits: the future is being polled; it was woken.
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
        // While the future is being polled, the mark is all: the poll looks at it when the
        // future returns (one read-modify-write, so whatever the waker did before is seen by
        // the poll that follows). Otherwise the task is woken.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING != 0 {
            return;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> Repoll<F> {
    pub fn new(future: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(0),
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
                this.shared.state.store(0, Ordering::Release);
                return Poll::Ready(out);
            }
            if this.shared.state.swap(0, Ordering::AcqRel) & WOKEN == 0 {
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

    /// Receives numbers in order and counts them; after registering for a wake it stays busy
    /// in its poll for a while, as a connection does, so wakes land inside polls too.
    struct Receiver {
        rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
        received: u32,
    }

    impl Future for Receiver {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            loop {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(i)) => {
                        assert_eq!(i, self.received);
                        self.received += 1;
                    }
                    Poll::Ready(None) => return Poll::Ready(self.received),
                    Poll::Pending => {
                        spin(300);
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn spin(n: u32) {
        for i in 0..n {
            std::hint::black_box(i);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_is_lost_when_wakes_race_the_poll() {
        // A thread sends at varying pace, so its wakes land before, inside and after the
        // receiver's polls; a wake neither seen by the poll nor passed to the task hangs it.
        const ITEMS: u32 = 200_000;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let sender = std::thread::spawn(move || {
            for i in 0..ITEMS {
                tx.send(i).unwrap();
                spin(i % 700);
            }
        });
        let receiver = tokio::spawn(Repoll::new(Receiver { rx, received: 0 }));
        let received = tokio::time::timeout(std::time::Duration::from_secs(20), receiver)
            .await
            .expect("a lost wake would hang here")
            .unwrap();
        sender.join().unwrap();
        assert_eq!(received, ITEMS);
    }
}
