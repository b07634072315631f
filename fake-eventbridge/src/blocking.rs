//! The fake on a tokio runtime of its own, for synchronous callers: the
//! agent's integration tests (which run the agent as a child process) and
//! udp-bench.

use std::{io, ops::Deref};

use tokio::runtime::Runtime;

use crate::Config;

/// A [`crate::FakeEventBridge`] serving on its own runtime. Everything that
/// reads it comes through `Deref`; [`pause`](Self::pause) and
/// [`resume`](Self::resume) block until done. Dropping it stops the server
/// and the runtime.
pub struct FakeEventBridge {
    // Declared first, so dropped first: the server task (and with it every
    // connection) stops before its runtime does.
    fake: crate::FakeEventBridge,
    rt: Runtime,
}

impl FakeEventBridge {
    /// Serves `config` on a runtime with one worker thread.
    pub fn start(config: Config) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Self::start_on(config, rt)
    }

    /// Serves `config` on `rt` (a multi-threaded runtime: its workers
    /// serve; nothing blocks on it).
    pub fn start_on(config: Config, rt: Runtime) -> io::Result<Self> {
        let fake = rt.block_on(crate::FakeEventBridge::start(config))?;
        Ok(Self { fake, rt })
    }

    /// An outage; see [`crate::FakeEventBridge::pause`].
    pub fn pause(&mut self) {
        self.rt.block_on(self.fake.pause());
    }

    /// Listens again; see [`crate::FakeEventBridge::resume`].
    pub fn resume(&mut self) -> io::Result<()> {
        self.rt.block_on(self.fake.resume())
    }
}

impl Deref for FakeEventBridge {
    type Target = crate::FakeEventBridge;

    fn deref(&self) -> &crate::FakeEventBridge {
        &self.fake
    }
}
