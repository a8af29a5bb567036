//! The actors, one file each. `supervisor` holds the supervision tree and `signal` the
//! shutdown phases; `protocol` holds the messages several actors share.

pub mod acker;
pub mod consumer;
pub mod monitor;
pub mod protocol;
pub mod publisher;
pub mod restarter;
pub mod saver;
pub mod signal;
pub mod supervisor;
