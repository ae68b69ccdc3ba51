//! Every filesystem path bwmon uses by default, in one place.

use std::path::{Path, PathBuf};

/// Where bpffs is mounted.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
/// Root of bwmon's pins: maps and links live under `<PIN_ROOT>/<interface>/` (in a network
/// namespace other than the host's, `<PIN_ROOT>/<interface>:netns<inode>/`).
pub const PIN_ROOT: &str = "/sys/fs/bpf/bwmon";
/// Default configuration file.
pub(crate) const CONFIG: &str = "/etc/bwmon/bwmon.toml";
/// Default slices file.
pub(crate) const SLICES: &str = "/etc/bwmon/slices.toml";
/// Default state file.
pub(crate) const STATE: &str = "/var/lib/bwmon/state";
/// Runtime files: the per-interface instance locks.
pub(crate) const RUNTIME: &str = "/run/bwmon";
/// Default control socket.
pub(crate) const SOCKET: &str = "/run/bwmon/bwmon.sock";
/// Where processes are listed (`/proc/PID/cgroup`: a tenant's cgroup).
pub(crate) const PROC: &str = "/proc";
/// The tenants' socket: every local user may ask it for their own slice.
pub(crate) const TENANT_SOCKET: &str = "/run/bwmon/tenant.sock";

/// The pin directory of one interface, in the calling thread's network namespace
/// ([`crate::interface::keyed_name`]).
pub(crate) fn pin_dir(pin_root: &Path, interface: &str) -> PathBuf {
    pin_root.join(crate::interface::keyed_name(interface))
}

/// The instance lock of one interface, in the calling thread's network namespace: one daemon
/// per interface.
pub fn interface_lock(runtime: &Path, interface: &str) -> PathBuf {
    runtime.join(format!("{}.lock", crate::interface::keyed_name(interface)))
}

/// The lock beside a file a daemon writes (its state, its sockets): `<file>.lock`. One daemon
/// per file, whatever interface it runs on.
pub fn lock_beside(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a pure v2 host (Debian 12),
/// `/sys/fs/cgroup/unified` under systemd's hybrid layout.
pub(crate) const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
