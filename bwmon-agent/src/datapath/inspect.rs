//! What tests, benchmarks and the kernel log ask of the loaded programs: a test run of the
//! classifier on a frame, the kernel's `bpf_stats` of each program, the diagnostics ring.

use aya::programs::{TestRun, TestRunOptions};
use bwmon_common::names;

use super::{Datapath, DatapathError, error::Result, program_err};

/// What the classifier did with a test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// Its return value (`-1`, "next", for every packet).
    pub verdict: i32,
    /// The `skb->priority` it set: the HTB class.
    pub priority: u32,
    /// The frame came out byte for byte as it went in.
    pub data_unchanged: bool,
}

/// Cost of one of the kernel programs, from the kernel's `bpf_stats` (zero unless
/// `kernel.bpf_stats_enabled` is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Times the program ran.
    pub run_count: u64,
    /// Total time spent in it.
    pub run_time: std::time::Duration,
}

impl Datapath {
    /// Starts reading the kernel programs' diagnostics (off unless `kernel_log` was set) and
    /// hands them to `logger`; the caller polls the returned reader's fd and calls `flush`.
    ///
    /// # Errors
    /// The log ring buffer is missing (already taken).
    pub fn kernel_logger<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(|source| {
            DatapathError::KernelLog {
                iface: self.iface.clone(),
                source,
            }
        })
    }

    /// Runs the classifier once on `frame` (an Ethernet frame) with `skb->mark = mark`
    /// through `BPF_PROG_TEST_RUN`; returns its verdict and the `skb->priority` it set. The
    /// packet is counted like a real one. For tests of packet parsing.
    ///
    /// # Errors
    /// The kernel refuses the test run.
    pub fn test_run_classifier(&mut self, frame: &[u8], mark: u32) -> Result<TestRunOutcome> {
        // struct __sk_buff: mark at byte 8, priority at byte 32; 192 bytes in all.
        const SKB_CTX_LEN: usize = 192;
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut data_out = vec![0u8; frame.len() + 256];
        let iface = self.iface.clone();
        let result = self
            .classifier()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .map_err(|source| program_err(&iface, names::CLASSIFIER, "test-running", source))?;
        Ok(TestRunOutcome {
            verdict: result.return_value as i32,
            priority: u32::from_ne_bytes([ctx_out[32], ctx_out[33], ctx_out[34], ctx_out[35]]),
            data_unchanged: data_out.get(..frame.len()) == Some(frame),
        })
    }

    /// Run counts and run time of the classifier and the drop program (`bpf_stats`).
    ///
    /// # Errors
    /// The kernel refuses the program info.
    pub fn program_stats(&self) -> Result<(ProgramStats, ProgramStats)> {
        let stats = |info: aya::programs::ProgramInfo| ProgramStats {
            run_count: info.run_count(),
            run_time: info.run_time(),
        };
        let classifier = self
            .ebpf
            .program(names::CLASSIFIER)
            .ok_or(DatapathError::MissingProgram {
                program: names::CLASSIFIER,
            })?
            .info()
            .map_err(|source| program_err(&self.iface, names::CLASSIFIER, "describing", source))?;
        // The drop program may be the pinned one of an earlier load; ask its link.
        let drop = self.pinned_drop_program()?;
        Ok((stats(classifier), stats(drop)))
    }
}
