//! Asks Linux to let the request threads preempt the background threads as soon as they wake.
//!
//! The usage writer inserts a batch of up to 500 events, which takes milliseconds (an estimate
//! from about 10 µs per event). On a core that it shares with a request thread, a request that
//! arrives meanwhile can wait for the rest of the writer's time slice. The SQLite insert also
//! pauses briefly every 64 rows (`store::sqlite_usage`). Since Linux 6.12, a thread of the
//! normal class may ask for a shorter slice (`sched_attr.sched_runtime`), and a woken thread with
//! a shorter slice preempts the running one.
//! Older kernels ignore the request, and failures are ignored too, because the slice changes
//! latency only.
//!
//! NOTE: on the 2-core test machine the p99 at one connection was still 1.2 to 1.5 ms with the
//! short slice (docs/BENCHMARKS.md), and it was not measured without it on the same code.

// libc has no safe wrapper for sched_getattr and sched_setattr.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::time::Duration;

/// The slice that request threads ask for: the kernel's minimum.
pub const REQUEST_THREAD_SLICE: Duration = Duration::from_micros(100);

thread_local! {
    static SLICE_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// Requests [`REQUEST_THREAD_SLICE`] for the calling thread, once per thread. Cheap after the
/// first call, so the proxy calls it for every request.
pub fn request_short_slice_once() {
    SLICE_REQUESTED.with(|requested| {
        if !requested.replace(true) {
            let _ = set_slice(REQUEST_THREAD_SLICE);
        }
    });
}

/// `struct sched_attr` of `sched_setattr(2)`, in its first version (56 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// Sets the calling thread's slice, keeping the normal policy and its current nice value.
#[cfg(target_os = "linux")]
pub fn set_slice(slice: Duration) -> std::io::Result<()> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: the kernel writes at most `size` bytes into `attr`, which lives for the whole call.
    let read = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if read != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        // A real-time or batch policy set by the operator stays as it is.
        return Ok(());
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.sched_runtime = slice.as_nanos() as u64;
    // SAFETY: `attr` is a valid, initialized `sched_attr` for the duration of the call.
    let written = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if written != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn set_slice(_slice: Duration) -> std::io::Result<()> {
    Ok(())
}

/// Returns the calling thread's slice as the kernel reports it.
#[cfg(target_os = "linux")]
pub fn current_slice() -> std::io::Result<Duration> {
    let mut attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, ..SchedAttr::default() };
    // SAFETY: as in `set_slice`.
    let read = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, attr.size, 0) };
    if read != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Duration::from_nanos(attr.sched_runtime))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn slice_is_requested_once_per_thread() {
        std::thread::spawn(|| {
            let before = current_slice().expect("sched_getattr works on Linux");
            request_short_slice_once();
            let after = current_slice().expect("sched_getattr works on Linux");
            // Kernels before 6.12 keep reporting their own slice. Newer ones report the request.
            assert!(
                after == REQUEST_THREAD_SLICE || after == before,
                "slice went from {before:?} to {after:?}, expected {REQUEST_THREAD_SLICE:?} or no change"
            );
            assert!(SLICE_REQUESTED.with(Cell::get));
        })
        .join()
        .expect("test thread");
    }
}
