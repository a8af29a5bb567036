//! The actors, one file each: the pipeline (`publisher`, `consumer`, `saver`, `restarter`,
//! `acker`), and the two that look after it as a whole: `signal`, which owns the
//! shutdown, and `monitor`, which reports on it. `protocol` holds what several of them
//! share.

pub(crate) mod acker;
pub(crate) mod consumer;
pub(crate) mod monitor;
pub mod protocol;
pub(crate) mod publisher;
pub mod restarter;
pub(crate) mod saver;
pub(crate) mod signal;

use actix::Addr;

use crate::broker::Broker;
use crate::supervision::supervisor::Supervisor;
use crate::supervision::tree::Tree;

/// The addresses of the running pipeline, for the actors that look after it as a whole
/// and for extensions that hook into it. `crate::app` builds it.
#[derive(Clone)]
pub struct Pipeline {
    pub supervisor: Addr<Supervisor>,
    /// The broker adapter, by the contract's messages.
    pub(crate) broker: Broker,
    pub(crate) acker: Addr<acker::Acker>,
    pub(crate) saver: Addr<saver::Saver>,
    pub restarter: Addr<restarter::Restarter>,
    pub(crate) consumer: Addr<consumer::Consumer>,
    /// Absent when messages come from standard input.
    pub(crate) publisher: Option<Addr<publisher::Publisher>>,
    /// Every child, in start order, as the Supervisor and the shutdown see them.
    pub(crate) tree: Tree,
}
