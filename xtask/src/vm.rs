//! `cargo xtask vm-test [--kernel 6.1|6.12|all]`: the end-to-end checks that depend on the
//! kernel, run inside qemu on the kernels Debian 12 users run (6.1, and 6.12 from backports).
//!
//! The guest has no disk: its initramfs is a static busybox and the virtio/9p modules; it
//! mounts the host's `/` read-only over 9p (with tmpfs, proc, sysfs, devtmpfs and bpffs over
//! it), points the kernel's module loader at the extracted kernel package, and runs the
//! host's already built test binaries against the host's `bwmon`. The guest's console is the
//! test output; it ends with an exit code the host reads back.
//!
//! qemu comes from Debian's packages, extracted under `target/vm/qemu` rather than installed:
//! on images whose `qemu-utils` comes from backports, installing bookworm's `qemu-system-x86`
//! would remove it. Only its libraries (which conflict with nothing) are installed. `/dev/kvm`
//! on the CI's machines cannot run a stock kernel, so the guest runs under TCG unless
//! `BWMON_VM_ACCEL=kvm`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    setup::Tools,
    workspace::{self, exec},
};

/// A kernel line, and the Debian package name that carries it.
struct Kernel {
    line: &'static str,
    /// `apt-cache search --names-only` pattern; the newest match is used.
    package: &'static str,
    /// TCX (6.6+); without it the classifier is a clsact filter, and TCX-only tests skip.
    tcx: bool,
}

const KERNELS: [Kernel; 2] = [
    Kernel {
        line: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        tcx: false,
    },
    Kernel {
        line: "6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        tcx: true,
    },
];

/// Which kernel lines run a check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum On {
    /// Every line: the check exercises what differs between kernels (the programs' loads,
    /// their attachment, the helpers and hooks they use).
    Every,
    /// The oldest line only.
    Oldest,
    /// The newest line only.
    Newest,
}

/// One check: a test binary, a name filter ("" = all its tests) and the lines it runs on.
struct Check {
    test: &'static str,
    filter: &'static str,
    on: On,
}

/// Where a guest's kernel stands among the lines one run boots, oldest first.
#[derive(Clone, Copy)]
struct Place {
    first: bool,
    last: bool,
}

const fn check(test: &'static str, filter: &'static str, on: On) -> Check {
    Check { test, filter, on }
}

/// The end-to-end checks in the guests. On every line: counting vs HTB's Sent with the exempt
/// split and drops, the takeover from the older layout (datapath), per-uid counts, the
/// attachment, its replacement, a re-created interface and teardown (counters), a restart that
/// keeps its counts (restart), counter slots given, kept and zeroed before reuse (slots), the
/// maps' kernel memory (memory), a lowered ceiling held (htb); cgroup slices charged through
/// the socket's cgroup and its ancestors, their downloads held, forwarded traffic not theirs;
/// downloads counted by uid and by source prefix, kept over kill -9 and a reboot, torn down
/// (clsact on 6.1, TCX on 6.12), attached under the unit's capabilities.
///
/// On one line only, the checks of what is the same code on every kernel (the agent's, or
/// HTB's round robin, which the host's kernel runs too) but wants Debian's own layout (pure
/// cgroup v2) or is slow under emulation, split between the lines so the two guests, which run
/// at once and share the host's cores, end together: shares (1 : 3 and 1 : 1 : 2, longer runs
/// under `BWMON_SLOW=1`) and the policed download rate on the oldest; a pattern's cgroups, a
/// cgroup slice's restart, threshold, tenant answer, `check` text, history and the unit's
/// sandbox on the newest.
const CHECKS: &[Check] = &[
    check("datapath", "", On::Every),
    check("counters", "", On::Every),
    check("restart", "", On::Every),
    check("slots", "", On::Every),
    check("memory", "", On::Every),
    check(
        "htb",
        "a_lowered_slice_is_held_to_its_ceiling_and_others_are_not",
        On::Every,
    ),
    check(
        "shares",
        "--exact shares_one_to_three_split_a_saturated_cap_one_to_three shares_one_one_two_give_a_quarter_a_quarter_and_a_half",
        On::Oldest,
    ),
    check(
        "cgroups",
        "a_process_in_a_tenant_cgroup_and_below_it",
        On::Every,
    ),
    check("cgroups", "a_capped_cgroup_slice_is_held", On::Every),
    check("cgroups", "traffic_forwarded_from_a_container", On::Every),
    check("cgroups", "a_cgroup_slice_over_its_threshold", On::Newest),
    check("cgroups", "a_patterns_new_cgroup", On::Newest),
    check("cgroups", "a_restart_and_a_reboot", On::Newest),
    check("cgroups", "a_tenant_in_a_cgroup", On::Newest),
    check("cgroups", "check_says_where_the_hierarchy_is", On::Newest),
    check("cgroups", "under_the_units_sandbox", On::Newest),
    check("cgroups", "a_cgroup_slices_history", On::Newest),
    check("ingress", "downloads_per_uid", On::Every),
    check("ingress", "a_source_prefix", On::Every),
    check("ingress", "received_bytes_survive", On::Every),
    check("ingress", "the_ingress_counter_attaches", On::Every),
    check("ingress", "a_limited_slices_downloads", On::Oldest),
];

/// The guest's virtual CPUs for the checks above.
pub(crate) const SMP: u32 = 2;

/// The checks on a guest with more CPUs than [`SMP`]: a load, a short lab check and the maps'
/// kernel memory, which grows with the CPUs.
const CHECKS_MANY_CPUS: &[Check] = &[check("memory", "", On::Every)];

/// Debian packages the guest needs on the host: busybox for the initramfs, the module tools,
/// qemu's libraries and firmware.
const HOST_PACKAGES: &[&str] = &[
    "busybox-static",
    // depmod on the host, modprobe in the guest (from the host's root).
    "kmod",
    "xz-utils",
    "zstd",
    "seabios",
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "librdmacm1",
    "libibverbs1",
    "libslirp0",
    "libvdeplug2",
    "libpixman-1-0",
    "libaio1",
    "liburing2",
    "libnuma1",
    "libjpeg62-turbo",
    "libpng16-16",
    "libsasl2-2",
    "libseccomp2",
    "libfuse3-3",
    "libbpf1",
];

/// qemu's own packages, extracted (not installed): the binary, its firmware and keymaps, and
/// its loadable modules (TCG is one).
const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-data", "qemu-system-common"];

/// Which kernels to test.
pub(crate) fn kernels(which: &str) -> anyhow::Result<Vec<&'static str>> {
    Ok(match which {
        "all" => KERNELS.iter().map(|k| k.line).collect(),
        line if KERNELS.iter().any(|k| k.line == line) => vec![
            KERNELS
                .iter()
                .find(|k| k.line == line)
                .map(|k| k.line)
                .unwrap_or_default(),
        ],
        other => bail!("--kernel {other:?}: one of 6.1, 6.12, all"),
    })
}

/// Runs the checks on each kernel of `lines` in guests of `smp` CPUs, the guests side by side
/// (each runs its TCG vCPUs on about one host core, so two kernels take the time of one);
/// fails when any check fails on any kernel.
pub(crate) fn run(tools: &Tools, lines: &[&str], smp: u32) -> anyhow::Result<()> {
    start(tools, lines, smp)?.finish()
}

/// The guests booted by [`start`], running their checks.
struct Guests(Vec<Guest>);

/// Boots a guest for each kernel of `lines` (`smp` CPUs each) that runs its checks and powers
/// off; [`Guests::finish`] waits for them.
fn start(tools: &Tools, lines: &[&str], smp: u32) -> anyhow::Result<Guests> {
    if !workspace::is_root() {
        bail!("the VM tests install packages and use the host's bpffs tools: run as root");
    }
    let vm = workspace::root().join("target/vm");
    fs::create_dir_all(&vm)?;
    install_host_packages()?;
    let qemu = extract_qemu(&vm)?;
    build::all(tools, Profile::Debug)?;
    let binaries = test_binaries(&build::ebpf_object())?;
    let bwmon = workspace::root().join("target/debug/bwmon");
    let mut guests = Guests(Vec::new());
    for (i, line) in lines.iter().enumerate() {
        let place = Place {
            first: i == 0,
            last: i + 1 == lines.len(),
        };
        let kernel = KERNELS
            .iter()
            .find(|k| k.line == *line)
            .context("unknown kernel line")?;
        let k = fetch_kernel(&vm, kernel)?;
        let checks = if smp > SMP { CHECKS_MANY_CPUS } else { CHECKS };
        let script = write_run_script(&vm, &k, kernel, place, checks, &binaries, &bwmon)?;
        let initrd = make_initrd(&vm, &k, &script)?;
        guests.0.push(Guest::start(&qemu, k, &initrd, smp)?);
    }
    Ok(guests)
}

impl Guests {
    /// Waits for every guest; fails when any check failed on any kernel (each failed guest's
    /// console log is printed).
    fn finish(self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for guest in self.0 {
            let (version, took, code, log) = guest.finish()?;
            let summary: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("test result:") || l.contains("VMTEST"))
                .collect();
            if code == Some(0) {
                eprintln!("xtask: vm-test: Linux {version} passed in {took} s");
                for l in summary {
                    println!("{l}");
                }
            } else {
                eprintln!(
                    "xtask: vm-test: Linux {version} FAILED (exit {code:?}) after {took} s; the guest's log:\n{log}"
                );
                failed.push(version);
            }
        }
        if !failed.is_empty() {
            bail!("VM tests failed on {}", failed.join(", "));
        }
        Ok(())
    }
}

fn apt(args: &[&str]) -> Command {
    let mut c = Command::new("apt-get");
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn install_host_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: vm-test: installing {} (static busybox for the guest, qemu's libraries and firmware)",
        missing.join(" ")
    );
    exec(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "--no-remove",
    ]);
    exec(install.args(&missing))
}

/// Downloads and extracts `packages` (the newest each) into `dir` unless already there.
pub(crate) fn extract(dir: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let stamp = dir.join(".extracted");
    if stamp.exists() {
        return Ok(());
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    exec(apt(&["download", "-qq"]).args(packages).current_dir(&debs))?;
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        exec(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root")),
        )?;
    }
    fs::write(&stamp, packages.join("\n"))?;
    Ok(())
}

/// The extracted qemu and its firmware directories.
struct Qemu {
    binary: PathBuf,
    firmware: Vec<PathBuf>,
    modules: PathBuf,
}

fn extract_qemu(vm: &Path) -> anyhow::Result<Qemu> {
    let dir = vm.join("qemu");
    extract(&dir, QEMU_PACKAGES)?;
    Ok(Qemu {
        binary: dir.join("root/usr/bin/qemu-system-x86_64"),
        firmware: vec![
            PathBuf::from("/usr/share/seabios"),
            dir.join("root/usr/share/qemu"),
        ],
        modules: dir.join("root/usr/lib/x86_64-linux-gnu/qemu"),
    })
}

/// The test binaries of the `tests` crate, by target name.
fn test_binaries(object: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    // With the object the host tests are built with: the same build, not a second one.
    let out = build::host_cargo(object)
        .args([
            "test",
            "--package",
            "tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("listing the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    // cargo's JSON messages, read for two string fields (xtask stays std-only).
    let field = |line: &str, after: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(after)? + after.len()..];
        let rest = &rest[rest.find(key)? + key.len()..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(r#""reason":"compiler-artifact""#) || !line.contains(r#""test":true"#) {
            continue;
        }
        if let (Some(name), Some(exe)) = (
            field(line, r#""target":{"#, r#""name":""#),
            field(line, "", r#""executable":""#),
        ) {
            map.insert(name, PathBuf::from(exe));
        }
    }
    Ok(map)
}

/// An extracted Debian kernel package.
struct KernelDir {
    version: String,
    root: PathBuf,
    vmlinuz: PathBuf,
}

fn fetch_kernel(vm: &Path, kernel: &Kernel) -> anyhow::Result<KernelDir> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", kernel.package])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    if names.is_empty() {
        exec(&mut apt(&["update", "-qq"]))?;
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", kernel.package])
            .output()?;
        names = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
    }
    names.sort_by_key(|n| version_key(n));
    let package = names
        .last()
        .with_context(|| format!("no Debian package matches {}", kernel.package))?
        .clone();
    let version = package.trim_start_matches("linux-image-").to_owned();
    let dir = vm.join(format!("kernel-{version}"));
    extract(&dir, &[&package])?;
    let root = dir.join("root");
    exec(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    Ok(KernelDir {
        vmlinuz: root.join(format!("boot/vmlinuz-{version}")),
        version,
        root,
    })
}

/// Sorts "linux-image-6.1.0-9-amd64" before "linux-image-6.1.0-56-amd64".
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The modules that give the guest 9p over virtio, dependencies first, as files.
fn boot_modules(k: &KernelDir) -> anyhow::Result<Vec<PathBuf>> {
    let base = k.root.join("lib/modules").join(&k.version);
    let dep = fs::read_to_string(base.join("modules.dep"))?;
    let deps: BTreeMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, rest) = l.split_once(':')?;
            Some((
                m.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let find = |stem: &str| {
        deps.keys()
            .find(|m| {
                let file = m.rsplit('/').next().unwrap_or(m);
                file.split('.').next() == Some(stem)
            })
            .cloned()
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(m: &str, deps: &BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_owned());
    }
    for stem in ["virtio_pci", "9pnet_virtio", "9p"] {
        // Built into some kernels: nothing to load then.
        if let Some(m) = find(stem) {
            visit(&m, &deps, &mut order);
        }
    }
    Ok(order.into_iter().map(|m| base.join(m)).collect())
}

/// A module file's contents, decompressed.
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => Ok(fs::read(path)?),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("{tool} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// The guest's `/init`: mounts, the host's root, the module loader, the checks, power off.
fn init_script(k: &KernelDir, script: &Path) -> String {
    let kdir = k.root.display();
    let script = script.display();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "VMTEST insmod $m failed"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || echo "VMTEST no host root"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
mkdir -p /host/run/tmp
chmod 1777 /host/run/tmp
mount -t bpf bpf /host/sys/fs/bpf
# Debian 12 is pure cgroup v2 (systemd mounts it there): the ingress counter attaches to its root.
grep -q ' /host/sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || echo "VMTEST no cgroup2"
mount -t tracefs tracefs /host/sys/kernel/tracing 2>/dev/null
printf '#!/bin/busybox sh\nexec /bin/busybox chroot /host /sbin/modprobe -d {kdir} "$@"\n' > /bin/vm-modprobe
chmod +x /bin/vm-modprobe
echo /bin/vm-modprobe > /proc/sys/kernel/modprobe
chroot /host /sbin/modprobe -d {kdir} -a veth tun sch_htb cls_bpf sch_ingress 2>&1
chroot /host /bin/sh {script}
echo "VMTEST-EXIT=$?"
poweroff -f
"#
    )
}

fn write_run_script(
    vm: &Path,
    k: &KernelDir,
    kernel: &Kernel,
    place: Place,
    checks: &[Check],
    binaries: &BTreeMap<String, PathBuf>,
    bwmon: &Path,
) -> anyhow::Result<PathBuf> {
    let mut s = String::from(
        // The host's /tmp stays visible (the workspace may be there): scratch space is a
        // tmpfs under /run, which temp_dir(), tempfile and iperf3 all take from TMPDIR.
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/tmp TMPDIR=/run/tmp\n",
    );
    s.push_str(&format!("export BWMON_BIN={}\n", bwmon.display()));
    // Rate tests measure longer in an emulated guest.
    s.push_str("export BWMON_SLOW=1\n");
    s.push_str("ip link set lo up\nuname -r\nfailed=0\n");
    let skip = if kernel.tcx { "" } else { "--skip tcx" };
    // Of the lines this run boots (oldest first): a guest alone runs every check.
    let runs_here = |on: On| match on {
        On::Every => true,
        On::Oldest => place.first,
        On::Newest => place.last,
    };
    // `BWMON_VM_ONLY=cgroups,htb`: only those checks (while working on one of them);
    // `cgroups/sandbox`: the checks of that binary whose filter contains `sandbox`.
    let only = std::env::var("BWMON_VM_ONLY").ok();
    let wanted = |name: &str, filter: &str| {
        only.as_deref().is_none_or(|o| {
            o.split(',').any(|n| match n.split_once('/') {
                Some((test, part)) => test == name && filter.contains(part),
                None => n == name,
            })
        })
    };
    for Check {
        test: name,
        filter,
        on,
    } in checks
    {
        if !runs_here(*on) || !wanted(name, filter) {
            continue;
        }
        let exe = binaries
            .get(*name)
            .with_context(|| format!("no test binary {name}"))?;
        // Each check's seconds in the summary: what the guest's minutes go to.
        s.push_str(&format!(
            "echo \"VMTEST running {name} {filter}\"\nt=$(date +%s)\n{} --test-threads=1 --color never --nocapture {skip} {filter} 2>&1 || failed=1\necho \"VMTEST took $(( $(date +%s) - t )) s: {name} {filter}\"\n",
            exe.display()
        ));
    }
    s.push_str("exit $failed\n");
    let path = vm.join(format!("run-{}.sh", k.version));
    fs::write(&path, s)?;
    Ok(path)
}

fn make_initrd(vm: &Path, k: &KernelDir, script: &Path) -> anyhow::Result<PathBuf> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "modules", "host", "tmp"] {
        cpio.dir(dir);
    }
    cpio.file("bin/busybox", &fs::read("/bin/busybox")?, 0o755);
    cpio.file("init", init_script(k, script).as_bytes(), 0o755);
    let mut order = String::new();
    for (i, m) in boot_modules(k)?.iter().enumerate() {
        let name = format!("{i:02}.ko");
        cpio.file(&format!("modules/{name}"), &module_bytes(m)?, 0o644);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("modules/order", order.as_bytes(), 0o644);
    let path = vm.join(format!("initrd-{}.cpio", k.version));
    fs::write(&path, cpio.finish())?;
    Ok(path)
}

/// A booted guest running its checks.
struct Guest {
    version: String,
    child: std::process::Child,
    log_path: PathBuf,
    started: Instant,
}

impl Guest {
    /// Boots the kernel `k` with `initrd` on `smp` CPUs (its console goes to a log file
    /// beside it).
    fn start(qemu: &Qemu, k: KernelDir, initrd: &Path, smp: u32) -> anyhow::Result<Guest> {
        let log_path = initrd.with_extension("log");
        let log = fs::File::create(&log_path)?;
        let accel = match std::env::var("BWMON_VM_ACCEL").as_deref() {
            Ok("kvm") => "kvm",
            // Many vCPUs on threads of their own race the kernel's live code patching (a
            // 64-CPU 6.12 guest died at boot of an `int3` oops in `sched_clock_cpu`): one
            // thread runs them all, slowly, which is enough for a load and a short check.
            _ if smp > SMP => "tcg,thread=single",
            _ => "tcg,thread=multi",
        };
        // SCHED_IDLE (util-linux's chrt): a guest takes only the CPU that other work on the
        // machine leaves (a developer's build beside `cargo xtask vm-test`).
        let mut cmd = Command::new("chrt");
        cmd.args(["--idle", "0"]).arg(&qemu.binary);
        cmd.env("QEMU_MODULE_DIR", &qemu.modules);
        for dir in &qemu.firmware {
            cmd.arg("-L").arg(dir);
        }
        cmd.args(["-accel", accel, "-cpu", "max", "-m", "4G"])
            .arg("-smp")
            .arg(smp.to_string())
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&k.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4 net.ifnames=0"])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        eprintln!(
            "xtask: vm-test: booting Linux {} under qemu ({smp} CPUs)",
            k.version
        );
        let child = cmd.spawn().context("starting qemu")?;
        Ok(Guest {
            version: k.version,
            child,
            log_path,
            started: Instant::now(),
        })
    }

    /// Waits for the guest to power off (30 min at most); returns its kernel version, the
    /// seconds it ran, the exit code it reported and its console log.
    fn finish(mut self) -> anyhow::Result<(String, u64, Option<i32>, String)> {
        let deadline = self.started + Duration::from_secs(1800);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let took = self.started.elapsed().as_secs();
        let text = String::from_utf8_lossy(&fs::read(&self.log_path)?).into_owned();
        let code = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("VMTEST-EXIT="))
            .and_then(|c| c.trim().parse().ok());
        Ok((self.version, took, code, text))
    }
}

/// A `newc` cpio archive, what the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100_000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        let mut out = self.out;
        // The kernel reads the archive in 512-byte blocks.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }
}
