//! The built `bwmon` binary run as a daemon in a lab, with its log and status.

use std::{path::PathBuf, process::Command, thread, time::Duration};

use crate::*;

/// The unsigned number `k` of a status JSON object, or a panic naming it.
pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// One HTTP request to 127.0.0.1:`port` (a metrics endpoint): the whole response.
pub fn http(port: u16, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Raises this process's descriptor limit (a test that holds thousands of connections).
pub fn raise_nofile(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// A `bwmon run` under test, with its files in a temporary directory. Stopped on drop.
pub struct Daemon {
    /// Directory holding config, slices, state, socket and log.
    pub dir: PathBuf,
    /// Environment for `bwmon run` (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// A command `bwmon run` is started under (e.g. `prlimit --nofile=1024`).
    pub wrapper: Vec<String>,
    /// Another `bwmon` binary to run than the one built (an older release, for upgrades).
    pub bin: Option<PathBuf>,
    child: Option<std::process::Child>,
}

impl Daemon {
    /// Writes `config` (without `interface`, which is the lab's) and `slices`, then starts.
    /// `slices`, `state` and `socket` default to files in the daemon's directory unless
    /// `config` sets them.
    pub fn start(lab: &Lab, config: &str, slices: &str) -> Daemon {
        let mut d = Daemon::prepare(lab, config, slices);
        d.restart();
        d
    }

    /// Like [`Daemon::start`] without starting it.
    pub fn prepare(lab: &Lab, config: &str, slices: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("bwmon-daemon-{}", lab.host_if));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!("interface = \"{}\"\n", lab.host_if);
        for (key, value) in [
            ("slices", "slices.toml"),
            ("state", "state"),
            ("socket", "bwmon.sock"),
            ("tenant_socket", "tenant.sock"),
        ] {
            if !config.lines().any(|l| l.starts_with(&format!("{key} ="))) {
                text.push_str(&format!("{key} = \"{value}\"\n"));
            }
        }
        text.push_str(config);
        std::fs::write(dir.join("bwmon.toml"), text).unwrap();
        std::fs::write(dir.join("slices.toml"), slices).unwrap();
        Daemon {
            dir,
            env: Vec::new(),
            wrapper: Vec::new(),
            bin: None,
            child: None,
        }
    }

    /// Replaces the config file (for a reload), keeping the lab's interface and files.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// The config file as written.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config()).unwrap()
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("bwmon.toml")
    }

    /// Runs `bwmon ARGS --config <ours>` to completion (teardown, check, run that must fail).
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.binary())
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap_or_else(|e| panic!("running bwmon {args:?}: {e}"))
    }

    /// `bwmon teardown`: what a reboot also loses (programs, pins, tree); the state stays.
    pub fn teardown(&self) {
        assert!(self.child.is_none(), "stop the daemon first");
        let out = self.command(&["teardown"]);
        assert!(
            out.status.success(),
            "teardown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The binary it runs: [`Daemon::bin`], else the one built.
    fn binary(&self) -> PathBuf {
        self.bin.clone().unwrap_or_else(bwmon_bin)
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the daemon again (after a kill).
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Starts the daemon again with extra `bwmon run` arguments.
    pub fn restart_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(self.binary());
                c
            }
            None => Command::new(self.binary()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(self.dir.join("bwmon.toml"))
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary().display()));
        self.child = Some(child);
        // Ready when the first status is served (a cold start in an emulated guest reads the
        // binary over 9p first: longer there).
        let tries = if std::env::var_os("BWMON_SLOW").is_some() {
            600
        } else {
            100
        };
        for _ in 0..tries {
            if let Some(s) = self.try_status()
                && !s["slices"].as_array().is_none_or(|a| a.is_empty())
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("bwmon run exited ({status}):\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("bwmon run did not serve status:\n{}", self.log());
    }

    /// Sends `signal` and waits for the process; returns its exit status.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Stops the daemon's sync worker thread alone (ptrace), as a sync that takes long would:
    /// its sockets still accept and read requests. It runs again when the guard drops (which
    /// must happen on this thread, the tracer's).
    pub fn freeze_sync_worker(&self) -> FrozenThread {
        let pid = self.pid().expect("running");
        let tasks = format!("/proc/{pid}/task");
        let tid: i32 = std::fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "bwmon-sync")
            })
            .unwrap_or_else(|| panic!("no bwmon-sync thread in {tasks}"))
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap();
        // SAFETY: ptrace on a thread of our own child; no memory is passed.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(
            seized,
            0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above.
        let stopped = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(
            stopped,
            0,
            "PTRACE_INTERRUPT {tid}: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waits for the traced thread to stop; `status` outlives the call.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(
            waited,
            tid,
            "waitpid {tid}: {}",
            std::io::Error::last_os_error()
        );
        FrozenThread(tid)
    }

    /// A sync now, whatever the interval: SIGHUP re-reads the files and syncs; returns once a
    /// newer report is served.
    pub fn sync_now(&self) {
        let before = u(&self.status(), "now");
        self.signal(libc::SIGHUP);
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(50));
            if u(&self.status(), "now") > before {
                return;
            }
        }
        // `now` is whole seconds: a second sync in the same second still counts.
        thread::sleep(Duration::from_secs(1));
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Replaces the slices file.
    pub fn write_slices(&self, slices: &str) {
        std::fs::write(self.dir.join("slices.toml"), slices).unwrap();
    }

    /// `bwmon status --json` (by the daemon's own binary: the control protocol is not kept
    /// across releases), or `None` when the daemon does not answer.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let out = Command::new(self.binary())
            .args(["status", "--json", "--config"])
            .arg(self.dir.join("bwmon.toml"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// `bwmon status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|| panic!("bwmon status failed:\n{}", self.log()))
    }

    /// One slice of `bwmon status --json`.
    pub fn slice(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["slices"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }
}

/// A thread of the daemon stopped by [`Daemon::freeze_sync_worker`]; it goes on when dropped.
pub struct FrozenThread(i32);

impl Drop for FrozenThread {
    fn drop(&mut self) {
        // SAFETY: detaches from the thread we seized; it resumes.
        if unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) } == 0 {
            return;
        }
        // The daemon was killed meanwhile: its thread is the tracer's to reap.
        for _ in 0..200 {
            let mut status = 0;
            // SAFETY: `status` outlives the call.
            let r = unsafe { libc::waitpid(self.0, &mut status, libc::__WALL | libc::WNOHANG) };
            if r != 0 {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("--- bwmon log ---\n{}", self.log());
        }
    }
}
