//! An empty TC program, for the benchmark only (the agent never loads it): attached beside the
//! classifier it sees the same packets, so what `bpf_stats` itself adds to every run can be
//! told apart from what the classifier costs.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
fn bwmon_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
