//! udp-agent: UDP datagrams captured in the kernel with XDP, delivered as
//! Amazon EventBridge events.
//!
//! One module per pipeline stage, in the order a packet meets them:
//! [`loader`] (load and attach the XDP object) ▸ [`capture`] (drain the ring
//! buffer) and [`afxdp`] (read consumed ports from AF_XDP sockets) ▸
//! [`record`] (decode a ring record or a redirected frame) ▸ [`reassembly`]
//! (IP fragments into whole datagrams) ▸ [`encode`] (the PutEvents entry) ▸
//! [`batch`] (the sink's request limits) ▸ [`spool`] (on disk until the
//! sink acknowledges) ▸ [`sink`] (stdout, EventBridge).
//! [`control`] owns the pinned maps that `udp-agent ports`/`stats` change and
//! read; [`hotplug`] keeps the program attached to interfaces that come and
//! go; [`metrics`] serves them all to Prometheus, and [`health`] tells a
//! load balancer whether to send traffic; [`pipeline`] wires the stages
//! together for `udp-agent run`, configured by [`config`] (flags, defaults
//! and the config file) and logging through [`logging`]; [`manual`] makes
//! the manual pages and shell completions from [`config`].

pub mod afxdp;
pub mod batch;
pub mod capture;
pub mod clock;
pub mod commands;
pub mod config;
pub mod control;
pub mod encode;
pub mod handoff;
pub mod health;
pub mod hotplug;
pub mod loader;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod pipeline;
pub mod ports;
pub mod privileges;
pub mod reassembly;
pub mod record;
pub mod sink;
pub mod spool;
pub mod stats;
