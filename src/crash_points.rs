//! Named places where a test has the process killed, as a power cut or `kill -9` would, to show
//! that work interrupted exactly there finishes after a restart and leaves nothing half done.
//! `COMPANERO_CRASH_AT=<name>` arms one point; without it a point costs one read of a cached
//! value. The process kills itself with SIGKILL: no destructor, flush or shutdown runs.

use std::sync::OnceLock;

/// The environment variable that names the armed point.
pub const ENV: &str = "COMPANERO_CRASH_AT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|name| !name.is_empty()))
        .as_deref()
}

/// Dies here when this point is the armed one.
pub fn reached(name: &str) {
    if armed() == Some(name) {
        // The line tells the test the point was really reached, not a crash elsewhere.
        eprintln!("crash point reached: {name}");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        unreachable!("SIGKILL ends the process");
    }
}
