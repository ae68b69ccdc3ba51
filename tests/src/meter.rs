//! Rates as the receiver sees them: meters in the lab's namespace that count what their
//! connections deliver as it arrives, and TCP senders (as a given uid) that run until dropped.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::*;

/// What a meter has received so far, over every connection it accepted.
pub struct Meter {
    received: Arc<AtomicU64>,
}

impl Meter {
    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Lab {
    /// A receiver on `addr` in the namespace: it accepts `conns` connections and counts what
    /// each delivers as it arrives.
    pub fn meter(&self, addr: SocketAddr, conns: usize) -> Meter {
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // Threads started from the namespace's thread live in the namespace too.
        self.spawn_in_ns(move || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            tx.send(()).unwrap();
            for _ in 0..conns {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let count = count.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("meter did not start");
        Meter { received }
    }
}

/// TCP connections from one uid, each sending as fast as it may until the sender is dropped.
pub struct Sender {
    stop: Arc<AtomicBool>,
    flows: Vec<thread::JoinHandle<u64>>,
}

/// Starts `flows` TCP connections from `uid` to `dst`.
pub fn send_as(uid: u32, dst: SocketAddr, flows: usize) -> Sender {
    let stop = Arc::new(AtomicBool::new(false));
    let flows = (0..flows)
        .map(|_| send_tcp_until(uid, dst, stop.clone()))
        .collect();
    Sender { stop, flows }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for f in self.flows.drain(..) {
            let _ = f.join();
        }
    }
}

/// Each meter's receive rate in bit/s over the next `window`.
pub fn rates(meters: &[&Meter], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = meters.iter().map(|m| m.bytes()).collect();
    let start = Instant::now();
    thread::sleep(window);
    let secs = start.elapsed().as_secs_f64();
    meters
        .iter()
        .zip(before)
        .map(|(m, b)| (m.bytes() - b) as f64 * 8.0 / secs)
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    assert!(n > 0, "the median of nothing");
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
