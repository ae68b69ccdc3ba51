//! Reading a whole map in a few `BPF_MAP_LOOKUP_BATCH` calls instead of two syscalls per key,
//! and counting a map's keys. aya 0.14 has no batch API nor a key walk without a key type;
//! this is the one place that speaks the raw syscall.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::Pod;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Keys per call: large enough that 65,536 entries take a handful of calls.
const CHUNK: u32 = 4096;

/// The `bpf(2)` command `cmd` with `attr`.
///
/// # Safety
/// Every pointer in `attr` must be valid for what `cmd` reads and writes there.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: the caller's pointers; the size is the attribute's own.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) }
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, per-CPU values) of a per-CPU hash or array map, summed over CPUs by `fold`.
///
/// Returns `Ok(None)` when the kernel has no batch lookups for this map type (the caller falls
/// back to iterating).
///
/// # Errors
/// A syscall error other than "not supported".
pub(crate) fn per_cpu_entries<K: Pod + Default, V: Pod + Default>(
    fd: &impl AsFd,
    nr_cpus: usize,
    fold: impl Fn(V, V) -> V,
) -> io::Result<Option<Vec<(K, V)>>> {
    // The kernel lays per-CPU values out 8-byte aligned.
    let stride = size_of::<V>().div_ceil(8) * 8;
    lookup_batch(fd, nr_cpus, stride, None, fold)
}

/// The (index, per-CPU values summed by `fold`) of `len` slots of a per-CPU array from index
/// `start` on.
///
/// Returns `Ok(None)` when the kernel has no batch lookups for this map type.
///
/// # Errors
/// A syscall error other than "not supported".
pub(crate) fn per_cpu_range<V: Pod + Default>(
    fd: &impl AsFd,
    nr_cpus: usize,
    start: u32,
    len: u32,
    fold: impl Fn(V, V) -> V,
) -> io::Result<Option<Vec<(u32, V)>>> {
    let stride = size_of::<V>().div_ceil(8) * 8;
    lookup_batch(fd, nr_cpus, stride, Some((start, len)), fold)
}

/// The (index, value) of `len` slots of an array shared by the CPUs (one value per key) from
/// index `start` on.
///
/// Returns `Ok(None)` when the kernel has no batch lookups for this map type.
///
/// # Errors
/// A syscall error other than "not supported".
pub(super) fn range<V: Pod + Default>(
    fd: &impl AsFd,
    start: u32,
    len: u32,
) -> io::Result<Option<Vec<(u32, V)>>> {
    lookup_batch(fd, 1, size_of::<V>(), Some((start, len)), |_, v| v)
}

/// Every (key, value) of a hash or array map (one value per key).
///
/// Returns `Ok(None)` when the kernel has no batch lookups for this map type.
///
/// # Errors
/// A syscall error other than "not supported".
pub(crate) fn entries<K: Pod + Default, V: Pod + Default>(
    fd: &impl AsFd,
) -> io::Result<Option<Vec<(K, V)>>> {
    lookup_batch(fd, 1, size_of::<V>(), None, |_, v| v)
}

/// Batch lookups of a map whose keys have `nr_cpus` values each, `stride` bytes apart: all
/// of it, or of an array `len` slots from `start` on.
fn lookup_batch<K: Pod + Default, V: Pod + Default>(
    fd: &impl AsFd,
    nr_cpus: usize,
    stride: usize,
    range: Option<(u32, u32)>,
    fold: impl Fn(V, V) -> V,
) -> io::Result<Option<Vec<(K, V)>>> {
    let mut keys = vec![K::default(); CHUNK as usize];
    let mut values = vec![0u8; CHUNK as usize * stride * nr_cpus];
    // Batch tokens: a u32 bucket/index for hashes and arrays; sized generously.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    let mut out = Vec::new();
    // The batch token is the last key read: a range from `start` goes on from `start - 1`.
    let mut left = range.map(|(_, len)| len);
    let mut from_token = match range {
        Some((0, _)) | None => false,
        Some((start, _)) => {
            token_in[..4].copy_from_slice(&(start - 1).to_ne_bytes());
            true
        }
    };
    if left == Some(0) {
        return Ok(Some(out));
    }
    loop {
        let mut attr = BatchAttr {
            in_batch: if from_token {
                token_in.as_ptr() as u64
            } else {
                0
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: left.map_or(CHUNK, |l| l.min(CHUNK)),
            map_fd: fd.as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the buffers outlive the call and are as large as `count` entries need.
        let rc = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let err = (rc < 0).then(io::Error::last_os_error);
        let mut done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524 /* ENOTSUPP */)
                    ) =>
            {
                return Ok(None);
            }
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf"))),
        };
        for (i, key) in keys.iter().take(attr.count as usize).enumerate() {
            let mut sum = V::default();
            for cpu in 0..nr_cpus {
                let at = (i * nr_cpus + cpu) * stride;
                // SAFETY: `at + size_of::<V>()` is within `values`; V is Pod (any bytes valid).
                let v: V = unsafe { std::ptr::read_unaligned(values[at..].as_ptr() as *const V) };
                sum = fold(sum, v);
            }
            out.push((*key, sum));
        }
        if let Some(l) = &mut left {
            *l = l.saturating_sub(attr.count);
            done |= *l == 0;
        }
        if done {
            return Ok(Some(out));
        }
        token_in = token_out;
        from_token = true;
        first = false;
    }
}

/// How many keys of `key_size` bytes a hash or trie holds, walked one `BPF_MAP_GET_NEXT_KEY`
/// at a time (no values are copied).
///
/// # Errors
/// A syscall error other than "no more keys".
pub(super) fn count_keys(fd: &impl AsFd, key_size: u32) -> io::Result<u64> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let size = key_size as usize;
    let mut key = vec![0u8; size.max(1)];
    let mut next = vec![0u8; size.max(1)];
    let mut n = 0;
    loop {
        let mut attr = Attr {
            map_fd: fd.as_fd().as_raw_fd() as u32,
            _pad: 0,
            // The first call passes no key: the walk starts at the first one.
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: both buffers hold a key of the map's size and outlive the call.
        let rc = unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(n),
                _ => Err(e),
            };
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
}
