//! Test hosts for bwmon's end-to-end tests: a network namespace joined to the root namespace by
//! a veth pair, traffic senders that run as a given uid, and sinks inside the namespace.
//!
//! Every [`Lab`] has unique names and removes its namespace, veth and bpffs pins when dropped,
//! also when the test panics. The tests need root and say so instead of skipping.
#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed setup step panics with context"
)]

pub mod bench;
mod cgroup;
mod daemon;
mod debian_root;
mod download;
pub mod frames;
mod kernel_log;
mod lab;
mod meter;
pub mod older;
mod poll;
pub mod schema;
mod smtp;
pub mod syscalls;
mod tc;
mod traffic;
mod webhook;

pub use cgroup::*;
pub use daemon::*;
pub use debian_root::*;
pub use download::*;
pub use kernel_log::*;
pub use lab::*;
pub use meter::*;
pub use poll::*;
pub use smtp::*;
pub use tc::*;
pub use traffic::*;
pub use webhook::*;
