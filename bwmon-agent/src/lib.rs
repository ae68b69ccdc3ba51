//! bwmon's agent: per-slice traffic accounting and bandwidth budgets on a shared Linux host.
//!
//! One module per concern; the daemon loop (`sync`) is the only place that wires them together.
//!
//! **The seed**, wherever these docs say so, is PlanetLab's node manager bandwidth monitor:
//! `bwmon.py` with `bwlimit.py` doing the HTB work, as of its 2007 change. bwmon keeps its
//! policy, attributes and notices, and none of its unit bugs, limits or lost counters.
#![deny(missing_docs)]

pub mod class;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub(crate) mod error_kind;
pub(crate) mod history;
pub mod htb;
pub mod interface;
pub mod notify;
pub mod paths;
pub(crate) mod policy;
pub mod serve;
pub mod state;
pub(crate) mod sync;
pub(crate) mod time;
pub mod units;
