//! bwmon's agent: per-slice traffic accounting and bandwidth budgets on a shared Linux host.
//!
//! One module per concern; the daemon loop (`sync`) is the only place that wires them together.
#![deny(missing_docs)]

pub mod btf;
pub mod class;
pub mod cli;
pub mod config;
pub mod connections;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod error_kind;
pub mod htb;
pub mod interface;
pub mod mailaddr;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod policy;
pub mod problems;
pub mod rspec;
pub mod slices;
pub mod state;
pub mod status;
pub mod sync;
pub mod units;
