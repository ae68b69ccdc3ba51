//! bwmon's agent: per-slice traffic accounting and bandwidth budgets on a shared Linux host.
//!
//! The wings, from the ground up (a wing imports only from wings below it; `farm-studio look
//! bwmon-agent/src` draws them, with no arrow running back up and no circle):
//!
//! - `units`, `class`, `time`, `error_kind`, `interface`, `cgroup`: the vocabulary — sizes and
//!   rates as types, general/exempt pairs, seconds and calendars, interfaces, cgroup v2 paths,
//!   the hierarchy and its scan; `paths`: where files live.
//! - `htb` (the tree over netlink), `policy` (the budget arithmetic, pure; the operator's
//!   levers, the rspec attributes, shares of a cap, which use `htb`'s quanta).
//! - `state`: what survives a restart, written atomically.
//! - `serve`: the documents bwmon shows (status, slice view) and the sockets and endpoint
//!   that serve them.
//! - `config`: what the operator wrote — `bwmon.toml` through one key table, the slices file —
//!   read into the types of the wings that use it (`htb`'s tree, `serve`'s access and limits).
//! - `datapath` (the eBPF programs, their maps and pins), `history` (what is kept of finished
//!   periods), `notify` (what is told to tenants).
//! - `sync`: one sync — observe, plan (pure), act; the one place that wires the kernel, the
//!   tree, the state and the policy together.
//! - `daemon`: `bwmon run`, the async edges around the sync thread; `cli`: one function per
//!   subcommand.
//!
//! **The seed**, wherever these docs say so, is PlanetLab's node manager bandwidth monitor:
//! `bwmon.py` with `bwlimit.py` doing the HTB work, as of its 2007 change. bwmon keeps its
//! policy, attributes and notices, and none of its unit bugs, limits or lost counters.
#![deny(missing_docs)]

pub(crate) mod cgroup;
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
