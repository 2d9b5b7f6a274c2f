//! The CPU priority of the usage writer's thread.
//!
//! The writer inserts a batch of rows every flush interval. When it shares a core with a proxy
//! thread, a request that arrives during a batch waits for the scheduler to switch back. A higher
//! nice value on the writer's thread makes the scheduler prefer the proxy thread, while the writer
//! still gets a share of the core (about a quarter at +5) when both are busy.

use std::io;

use rustix::process::{getpriority_process, setpriority_process};
use rustix::thread::gettid;

/// The highest nice value Linux accepts.
const MAX_NICE: i32 = 19;

/// Raises the calling thread's nice value by `increment`, up to 19, and returns the new value.
/// The threads that exist keep theirs, and threads this one creates later inherit the new one
/// (such as sqlx's SQLite worker threads). An increment of 0 changes nothing.
pub fn lower_current_thread(increment: i32) -> io::Result<i32> {
    let thread = Some(gettid());
    let current = getpriority_process(thread)?;
    if increment <= 0 {
        return Ok(current);
    }
    let lowered = (current + increment).min(MAX_NICE);
    setpriority_process(thread, lowered)?;
    Ok(getpriority_process(thread)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = getpriority_process(Some(gettid())).unwrap();
        let lowered = std::thread::spawn(|| lower_current_thread(3).unwrap()).join().unwrap();
        assert_eq!(lowered, (before + 3).min(MAX_NICE));
        assert_eq!(getpriority_process(Some(gettid())).unwrap(), before, "the test thread's priority changed");
    }

    #[test]
    fn stops_at_the_highest_nice_value() {
        let lowered = std::thread::spawn(|| lower_current_thread(40).unwrap()).join().unwrap();
        assert_eq!(lowered, MAX_NICE);
        let unchanged = std::thread::spawn(|| lower_current_thread(0).unwrap()).join().unwrap();
        assert_eq!(unchanged, getpriority_process(Some(gettid())).unwrap());
    }
}
