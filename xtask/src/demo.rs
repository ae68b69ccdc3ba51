//! `cargo xtask demo`: bwmon at work in a throwaway lab. A network namespace plays a remote
//! host; three tenant uids send traffic through bwmon's interface; `bwmon status` is shown
//! every two seconds until one tenant is visibly capped while the others are not. Beside the
//! uid slices, one slice is a cgroup (a CI job's): its process runs as alice's uid, and is
//! charged to the job, not to her. Everything is torn down at the end, also on Ctrl-C.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    build::{self, Profile},
    setup::Tools,
    workspace,
};

const NETNS: &str = "bwmon-demo";
const HOST_IF: &str = "bwdemo0";
const PEER_IF: &str = "bwdemo1";
/// (name, uid, destination, port, budget in KBytes)
const TENANTS: [(&str, u32, &str, u16, u64); 3] = [
    ("alice", 60001, "10.250.0.2", 5301, 12_000),
    ("bob", 60002, "10.250.0.2", 5302, 2_000_000),
    ("carol", 60003, "10.251.0.2", 5303, 12_000),
];

/// The cgroup slice: (name, its cgroup under the v2 hierarchy, destination, port, budget).
const CGROUP_TENANT: (&str, &str, &str, u16, u64) = (
    "ci-job",
    "/bwmon-demo/ci-job-42",
    "10.250.0.2",
    5304,
    2_000_000,
);

/// Where the cgroup v2 hierarchy is mounted (pure v2, else the hybrid layout's).
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let v2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| v2.contains(p))
        .map(PathBuf::from)
        .context("no cgroup v2 hierarchy is mounted")
}

/// A tenant who downloads (`iperf3 -R`) under `count = "both"`: (name, uid, source, port,
/// budget in KBytes).
const DOWNLOADER: (&str, u32, &str, u16, u64) = ("dave", 60004, "10.250.0.2", 5305, 2_000_000);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

// SAFETY: libc's signal(2) with its C signature.
unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

/// Everything the demo created, removed on drop.
struct Lab {
    dir: PathBuf,
    bwmon: PathBuf,
    children: Vec<Child>,
    /// The cgroup slice's cgroup, removed once its process is gone.
    cgroup: Option<PathBuf>,
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let config = self.dir.join("bwmon.toml");
        if let Some(c) = config.to_str() {
            quiet(
                self.bwmon.to_str().unwrap_or("bwmon"),
                &["teardown", "--config", c, "--forget-state"],
            );
        }
        quiet("ip", &["link", "del", HOST_IF]);
        quiet("ip", &["netns", "del", NETNS]);
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
            let _ = cgroup.parent().map(std::fs::remove_dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("demo: lab removed");
    }
}

fn build_lab() -> anyhow::Result<()> {
    // Leftovers of an interrupted run.
    quiet("ip", &["link", "del", HOST_IF]);
    quiet("ip", &["netns", "del", NETNS]);
    run("ip", &["netns", "add", NETNS])?;
    run(
        "ip",
        &[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF, "netns", NETNS,
        ],
    )?;
    run("ip", &["addr", "add", "10.250.0.1/24", "dev", HOST_IF])?;
    run("ip", &["link", "set", HOST_IF, "up"])?;
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", "10.250.0.2/24", "dev", PEER_IF],
        vec!["addr", "add", "10.251.0.2/24", "dev", PEER_IF],
        vec!["link", "set", PEER_IF, "up"],
    ] {
        let mut full = vec!["-n", NETNS];
        full.extend(args);
        run("ip", &full)?;
    }
    run(
        "ip",
        &[
            "route",
            "add",
            "10.251.0.0/24",
            "via",
            "10.250.0.2",
            "dev",
            HOST_IF,
        ],
    )
}

fn write_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("bwmon.toml"),
        format!(
            "# The demo's configuration: a 2-minute period, 1 s syncs, one exempt prefix.\ninterface = \"{HOST_IF}\"\nnode_cap = \"20mbit\"\nexempt_max = \"40mbit\"\nperiod = \"2m\"\ninterval = \"1s\"\nslices = \"slices.toml\"\nstate = \"state\"\nsocket = \"bwmon.sock\"\ntenant_socket = \"tenant.sock\"\nexempt_prefixes = [\"10.251.0.0/24\"]\n"
        ),
    )?;
    let mut slices = String::new();
    for (name, uid, _, _, kbyte) in TENANTS {
        slices.push_str(&format!(
            "[[slice]]\nname = \"{name}\"\nxid = {uid}\nnet_max_kbyte = {kbyte}\n\n"
        ));
    }
    let (name, cgroup, _, _, kbyte) = CGROUP_TENANT;
    slices.push_str(&format!(
        "# A CI job's cgroup: its processes (and those below it) are its own, whatever their uid.\n[[slice]]\nname = \"{name}\"\ncgroup = \"{cgroup}\"\nnet_max_kbyte = {kbyte}\n\n"
    ));
    let (name, uid, _, _, kbyte) = DOWNLOADER;
    slices.push_str(&format!(
        "[[slice]]\nname = \"{name}\"\nxid = {uid}\nnet_max_kbyte = {kbyte}\n# What dave downloads counts against his budget too.\ncount = \"both\"\n\n"
    ));
    std::fs::write(dir.join("slices.toml"), slices)?;
    Ok(())
}

/// The bytes `bwmon status --json` shows `slice` received.
fn received(json: &str, slice: &str) -> u64 {
    let mut current = String::new();
    let mut total = 0;
    for line in json.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("\"name\": \"") {
            current = rest.trim_end_matches(['"', ',']).to_owned();
        } else if current == slice
            && let Some(rest) = line
                .strip_prefix("\"received_bytes\": ")
                .or_else(|| line.strip_prefix("\"received_exempt_bytes\": "))
        {
            total += rest.trim_end_matches(',').parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// Which slices `bwmon status --json` shows as capped (general or exempt).
fn capped(json: &str) -> HashSet<String> {
    let mut current = String::new();
    let mut out = HashSet::new();
    for line in json.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("\"name\": \"") {
            current = rest.trim_end_matches(['"', ',']).to_owned();
        } else if line.starts_with("\"capped\": true")
            || line.starts_with("\"exempt_capped\": true")
        {
            out.insert(current.clone());
        }
    }
    out
}

pub(crate) fn run_demo(tools: &Tools) -> anyhow::Result<()> {
    if !workspace::is_root() {
        bail!("the demo builds a network namespace and loads eBPF programs: run it as root");
    }
    build::all(tools, Profile::Debug)?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { signal(2, on_sigint) };
    let dir = std::env::temp_dir().join("bwmon-demo");
    let bwmon = workspace::root().join("target/debug/bwmon");
    let mut lab = Lab {
        dir: dir.clone(),
        bwmon: bwmon.clone(),
        children: Vec::new(),
        cgroup: None,
    };
    build_lab()?;
    let cgroup_dir = cgroup2_root()?.join(CGROUP_TENANT.1.trim_start_matches('/'));
    std::fs::create_dir_all(&cgroup_dir)
        .with_context(|| format!("creating {}", cgroup_dir.display()))?;
    lab.cgroup = Some(cgroup_dir.clone());
    write_files(&dir)?;
    let config = dir.join("bwmon.toml");
    let log = std::fs::File::create(dir.join("bwmon.log"))?;
    eprintln!(
        "demo: starting bwmon run --config {} (log in {})",
        config.display(),
        dir.join("bwmon.log").display()
    );
    lab.children.push(
        Command::new(&bwmon)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stderr(log)
            .spawn()
            .context("starting bwmon")?,
    );
    let ports = TENANTS
        .iter()
        .map(|t| t.3)
        .chain([CGROUP_TENANT.3, DOWNLOADER.3]);
    for port in ports {
        lab.children.push(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    NETNS,
                    "iperf3",
                    "-s",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s")?,
        );
    }
    thread::sleep(Duration::from_secs(2));
    for (name, uid, dst, port, kbyte) in TENANTS {
        let class = if dst.starts_with("10.251") {
            "exempt"
        } else {
            "general"
        };
        eprintln!("demo: {name} (uid {uid}, budget {kbyte} KB) sends {class} traffic to {dst}");
        lab.children.push(
            Command::new("setpriv")
                .args([
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &uid.to_string(),
                    "--clear-groups",
                ])
                .args([
                    "iperf3",
                    "-c",
                    dst,
                    "-p",
                    &port.to_string(),
                    "-t",
                    "100",
                    "-b",
                    "8M",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -c")?,
        );
    }
    // The CI job: alice's uid, inside the job's cgroup (the shell moves itself there, then
    // becomes iperf3: sockets keep the cgroup of the process that makes them).
    let (name, cgroup, dst, port, kbyte) = CGROUP_TENANT;
    eprintln!(
        "demo: {name} (cgroup {cgroup}, budget {kbyte} KB) sends general traffic to {dst}, as alice's uid"
    );
    let procs = cgroup_dir.join("cgroup.procs");
    let alice = TENANTS[0].1.to_string();
    lab.children.push(
        // A fixed script: the cgroup file and the command come as its arguments.
        Command::new("sh")
            .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
            .arg(&procs)
            .args([
                "setpriv",
                "--reuid",
                &alice,
                "--regid",
                &alice,
                "--clear-groups",
            ])
            .args([
                "iperf3",
                "-c",
                dst,
                "-p",
                &port.to_string(),
                "-t",
                "100",
                "-b",
                "4M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the CI job's iperf3 -c")?,
    );
    let (name, uid, src, port, kbyte) = DOWNLOADER;
    eprintln!("demo: {name} (uid {uid}, budget {kbyte} KB, count = \"both\") downloads from {src}");
    lab.children.push(
        Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ])
            .args([
                "iperf3",
                "-R",
                "-c",
                src,
                "-p",
                &port.to_string(),
                "-t",
                "100",
                "-b",
                "8M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -R -c")?,
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut shown_capped = 0;
    while Instant::now() < deadline && !INTERRUPTED.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(2));
        let table = Command::new(&bwmon)
            .args(["status", "--config"])
            .arg(&config)
            .output()?;
        print!("\n{}", String::from_utf8_lossy(&table.stdout));
        let json = Command::new(&bwmon)
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()?;
        let capped = capped(&String::from_utf8_lossy(&json.stdout));
        let others_free = ["bob", "carol", CGROUP_TENANT.0]
            .iter()
            .all(|n| !capped.contains(*n));
        if capped.contains("alice") && others_free {
            shown_capped += 1;
            if shown_capped == 3 {
                let json = String::from_utf8_lossy(&json.stdout);
                println!(
                    "\ndemo: alice went over her general budget and is held to what is left of it until the period ends;\n      bob (large budget) and carol (exempt traffic, its own budget) run at full speed, and so does\n      ci-job: a cgroup slice whose process runs as alice's uid is charged to the job, not to her;\n      dave downloaded {:.1} MB, counted against his budget (count = \"both\").",
                    received(&json, DOWNLOADER.0) as f64 / 1e6
                );
                return Ok(());
            }
        }
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted");
        return Ok(());
    }
    bail!(
        "alice was not capped within 90 s; see {}",
        dir.join("bwmon.log").display()
    )
}
