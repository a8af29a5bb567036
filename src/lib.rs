//! Mayhem Mandrill: a chaos-monkey service on actix, after Lynn Root's "Advanced asyncio:
//! Solving Real-World Production Problems" (PyCon 2019). See ARCHITECTURE.md for the map.

pub mod actors;
pub mod app;
pub mod cli;
pub mod config;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod source;
pub mod store;
pub mod subscription;
pub mod supervision;
#[cfg(test)]
mod testkit;

/// The tracing target of per-message lines, which `--log none` turns off while keeping
/// lifecycle lines.
pub const FLOW: &str = "mandrill::flow";
