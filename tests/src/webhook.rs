//! A webhook receiver on loopback (`webhook_server.py`, python3's http.server) that answers as
//! told — 200, 500, or not at all — checks each event's signature and keeps what it received.

use std::{
    net::TcpStream, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command, thread,
    time::Duration,
};

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookMode {
    /// 200.
    Ok,
    /// 500.
    Fail,
    /// No answer for a minute.
    Hang,
}

/// A webhook receiver on loopback, checking signatures with its secret.
pub struct HookServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The secret it checks signatures with, in a file of mode 0600 that bwmon can be given as
    /// `secret_file`.
    pub secret_file: PathBuf,
    dir: PathBuf,
    child: std::process::Child,
    tls: bool,
}

impl HookServer {
    /// Starts a receiver on `port` answering as `mode`, and waits until it accepts connections.
    pub fn start(port: u16, mode: HookMode) -> HookServer {
        HookServer::start_with(port, mode, false)
    }

    /// Starts a receiver that speaks HTTPS with a self-signed certificate for 127.0.0.1 (one
    /// no client that checks certificates accepts).
    pub fn start_tls(port: u16, mode: HookMode) -> HookServer {
        HookServer::start_with(port, mode, true)
    }

    fn start_with(port: u16, mode: HookMode, tls: bool) -> HookServer {
        let dir = std::env::temp_dir().join(format!("bwmon-hook-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("webhook_server.py");
        std::fs::write(&script, include_str!("webhook_server.py")).unwrap();
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, format!("test-secret-{port}\n")).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if tls {
            let (key, crt) = (dir.join("tls.key"), dir.join("tls.crt"));
            crate::cmd(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                    &key.display().to_string(),
                    "-out",
                    &crt.display().to_string(),
                ],
            );
        }
        let server = HookServer::spawn(port, &dir, &script, &secret_file, tls);
        server.set(mode);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the webhook receiver did not listen on {port}");
    }

    fn spawn(
        port: u16,
        dir: &PathBuf,
        script: &PathBuf,
        secret: &PathBuf,
        tls: bool,
    ) -> HookServer {
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .arg(secret)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start python3 (Debian's python3)");
        HookServer {
            port,
            secret_file: secret.clone(),
            dir: dir.clone(),
            child,
            tls,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/bwmon", self.port)
    }

    /// From now on, answers as `mode`.
    pub fn set(&self, mode: HookMode) {
        let text = match mode {
            HookMode::Ok => "ok",
            HookMode::Fail => "fail",
            HookMode::Hang => "hang",
        };
        let tmp = self.dir.join("mode.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("mode")).unwrap();
    }

    fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every request received: `{"mode", "signature_ok", "headers", "event", "at"}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.lines("requests.jsonl")
    }

    /// The TLS handshakes that failed: `{"error"}`.
    pub fn tls_errors(&self) -> Vec<serde_json::Value> {
        self.lines("tls_errors.jsonl")
    }

    /// The events answered 200, in the order they were.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.lines("accepted.jsonl")
    }

    /// Waits up to `secs` for at least `n` accepted events; returns them.
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<serde_json::Value> {
        crate::poll(secs, || self.accepted(), |got| got.len() >= n)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
