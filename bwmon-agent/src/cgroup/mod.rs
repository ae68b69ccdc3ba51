//! Tenants as cgroups (cgroup v2): a slice may be a cgroup and everything below it, named by
//! its path under the v2 hierarchy or found by a pattern.
//!
//! - [`path`]: paths and patterns as the slices file gives them, and the xid a cgroup slice
//!   gets when none is configured (pure).
//! - [`hierarchy`]: where the v2 hierarchy is mounted, and a process's cgroup.
//! - [`scan`]: the cgroups the slices and patterns name, with their kernel ids, read from the
//!   hierarchy each sync.
//!
//! The kernel charges a packet to a cgroup slice when its socket's cgroup, or an ancestor of
//! it at a tenant cgroup's level, has the slice's cgroup id (`bwmon-ebpf/src/cgroup.rs`). A
//! socket keeps the cgroup of the process that made it: a process moved into a tenant cgroup
//! is charged there for the sockets it opens from then on.

pub(crate) mod hierarchy;
pub(crate) mod path;
pub(crate) mod scan;

pub(crate) use hierarchy::Hierarchy;
pub(crate) use path::{CgroupPath, Pattern};
pub(crate) use scan::{Tenants, scan};
