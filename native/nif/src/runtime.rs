//! The one tokio runtime of the NIF: built on first use, two named worker threads, never entered
//! from a scheduler thread with `block_on`.
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

const WORKER_THREADS: usize = 2;

pub(crate) fn get() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .max_blocking_threads(4)
            .thread_name("libcluster_rs")
            .enable_all()
            .build()
            .expect("libcluster_rs: cannot build the tokio runtime")
    })
}
