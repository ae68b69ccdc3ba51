//! The shipped unit's `SystemCallFilter=` against what a daemon really calls: the unit's
//! allow-list expanded by `systemd-analyze syscall-filter` (no systemd runs as PID 1 here, so
//! the filter cannot be applied), and the system calls `strace -f` saw.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The shipped unit file.
pub fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bwmon-agent/systemd/bwmon.service")
}

/// Arguments that run a command under `strace`, writing every system call of it and of its
/// threads and children to `log`. `-D` keeps the command the caller's direct child (the
/// tracer is a detached grandchild), so its pid and its signals are as without strace.
pub fn strace_args(log: &Path) -> Vec<String> {
    ["strace", "-D", "-f", "-qq", "-o"]
        .map(String::from)
        .into_iter()
        .chain([log.display().to_string()])
        .collect()
}

/// The system calls named in an `strace -f` log.
pub fn traced(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    text.lines()
        .filter_map(|line| {
            // "PID name(args..." or "PID name(args <unfinished ...>"; resumptions, signals
            // and exits ("<... name resumed>", "--- SIG", "+++ exited") name nothing new.
            let call = line.split_once(' ')?.1.trim_start();
            let (name, _) = call.split_once('(')?;
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then(|| name.to_owned())
        })
        .collect()
}

/// What the unit's `SystemCallFilter=` lines allow: their groups expanded as the installed
/// systemd defines them, names kept, `~` entries taken out.
pub fn unit_allows(unit: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
    let groups = groups();
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let Some(value) = line.trim().strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (deny, value) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        for entry in value.split_whitespace() {
            let names = expand(&groups, entry);
            if deny {
                denied.extend(names);
            } else {
                allowed.extend(names);
            }
        }
    }
    assert!(
        !allowed.is_empty(),
        "{}: no SystemCallFilter=",
        unit.display()
    );
    let mut out = &allowed - &denied;
    // What systemd allows whatever the filter says (systemd.exec(5)).
    out.extend(
        [
            "execve",
            "exit",
            "exit_group",
            "getrlimit",
            "rt_sigreturn",
            "sigreturn",
        ]
        .map(String::from),
    );
    out
}

/// systemd's syscall groups: `@name` → its entries (names and `@groups`).
fn groups() -> BTreeMap<String, Vec<String>> {
    let out = crate::cmd("systemd-analyze", &["syscall-filter", "--no-pager"]);
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_owned());
            groups.entry(line.trim().to_owned()).or_default();
        } else if let Some(g) = &current {
            let entry = line.trim();
            if !entry.is_empty() && !entry.starts_with('#') {
                groups.get_mut(g).expect("group").push(entry.to_owned());
            }
        }
    }
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, entry: &str) -> BTreeSet<String> {
    if !entry.starts_with('@') {
        return BTreeSet::from([entry.to_owned()]);
    }
    let members = groups
        .get(entry)
        .unwrap_or_else(|| panic!("systemd knows no syscall group {entry}"));
    members.iter().flat_map(|m| expand(groups, m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read` makes of a file holding `text`.
    fn read_written<T>(text: &str, read: impl Fn(&Path) -> T) -> T {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bwmon-syscalls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, text).unwrap();
        let out = read(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    #[test]
    fn the_shipped_filter_allows_bpf_and_file_io_and_not_mount_and_a_tilde_takes_out() {
        let shipped = unit_allows(&unit_file());
        for call in ["bpf", "openat", "getdents64", "execve"] {
            assert!(shipped.contains(call), "{call}");
        }
        assert!(!shipped.contains("mount") && !shipped.contains("ptrace"));
        let narrowed = read_written(
            "[Service]\nSystemCallFilter=@system-service bpf\nSystemCallFilter=~@file-system\n",
            unit_allows,
        );
        assert!(narrowed.contains("bpf") && !narrowed.contains("openat"));
    }

    #[test]
    fn an_strace_log_names_each_call_once_and_skips_resumptions_signals_and_exits() {
        let calls = read_written(
            "12 openat(AT_FDCWD, \"/x\", O_RDONLY) = 3\n12 read(3,  <unfinished ...>\n13 bpf(BPF_MAP_CREATE, {}, 72) = 4\n12 <... read resumed>\"\", 10) = 0\n12 --- SIGTERM {si_signo=SIGTERM} ---\n12 +++ exited with 0 +++\n",
            traced,
        );
        assert_eq!(
            calls,
            BTreeSet::from(["bpf", "openat", "read"].map(String::from))
        );
    }
}
