//! Running one discovery task: cancellation and panic containment in one place, so every kind of
//! discovery (epmd, DNS, HTTP, gossip) gets the same guarantees.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::event::{Error, ErrorKind, Event, Sink};

/// Drive `work` until it finishes or `cancel` fires. A panic inside `work` is caught and reported
/// to the sink as `Event::Error(Panic)`; it never unwinds into the runtime or the VM.
pub async fn supervise<F>(cancel: CancellationToken, sink: Arc<dyn Sink>, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let guarded = AssertUnwindSafe(work).catch_unwind();
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {}
        result = guarded => {
            if let Err(panic) = result {
                let message = panic_message(&panic);
                tracing::error!(%message, "discovery task panicked");
                sink.send(Event::Error(Error::new(ErrorKind::Panic, message)));
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "task panicked".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn a_panic_becomes_an_error_event() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink: Arc<dyn Sink> = Arc::new(tx);
        supervise(CancellationToken::new(), sink, async { panic!("boom") }).await;
        match rx.recv().await {
            Some(Event::Error(e)) => {
                assert_eq!(e.kind, ErrorKind::Panic);
                assert_eq!(e.message, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancellation_ends_a_task_that_never_finishes() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let sink: Arc<dyn Sink> = Arc::new(tx);
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(supervise(cancel.clone(), sink, futures::future::pending()));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("task did not stop")
            .unwrap();
        assert!(rx.try_recv().is_err(), "a cancelled task sends nothing");
    }
}
