//! Discovery handles: a resource per running task, owned (monitored) by the process that started it.
//! The task is cancelled when the owner dies (`down`), when `discovery_stop/1` is called, or when the
//! handle is garbage-collected (`Drop`). Cancelling drops the task's future, and with it its sockets
//! and timers.
use std::future::Future;
use std::sync::Arc;

use libcluster_core::event::Sink;
use libcluster_core::task::supervise;
use rustler::{Env, LocalPid, Monitor, Resource, ResourceArc, Term};
use tokio_util::sync::CancellationToken;

use crate::runtime;
use crate::sink::ProcessSink;

pub(crate) struct Discovery {
    cancel: CancellationToken,
}

#[rustler::resource_impl]
impl Resource for Discovery {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.cancel.cancel();
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Start `work` on the runtime for the calling process. `work` gets the sink its events go to; it
/// need not watch for cancellation: its future is dropped when the handle is stopped.
pub(crate) fn spawn<F, Fut>(env: Env<'_>, tag: Term<'_>, work: F) -> ResourceArc<Discovery>
where
    F: FnOnce(Arc<dyn Sink>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let owner = env.pid();
    let cancel = CancellationToken::new();
    let handle = ResourceArc::new(Discovery {
        cancel: cancel.clone(),
    });
    // If the owner is already dead, monitor returns None: nobody would read the events.
    if handle.monitor(Some(env), &owner).is_none() {
        cancel.cancel();
        return handle;
    }
    let sink: Arc<dyn Sink> = Arc::new(ProcessSink::new(owner, tag));
    let fut = work(sink.clone());
    runtime::get().spawn(supervise(cancel, sink, fut));
    handle
}

/// Stop the task behind `handle`. Idempotent; returns at once.
#[rustler::nif]
fn discovery_stop(handle: ResourceArc<Discovery>) -> rustler::Atom {
    handle.cancel.cancel();
    crate::atoms::ok()
}

/// Whether the task behind `handle` has been cancelled (by stop, owner death or GC).
#[rustler::nif]
fn discovery_stopped(handle: ResourceArc<Discovery>) -> bool {
    handle.cancel.is_cancelled()
}
