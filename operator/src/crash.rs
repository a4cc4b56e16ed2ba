//! Crash injection for the crash-safety tests: with `PATROL_TEST_CRASH_AT=<point>` the
//! process exits abruptly (no cleanup, like a kill -9) the first time it reaches `<point>`.
//! Points: `record-written`, `secret-written`, `status-written`.

use std::sync::OnceLock;

/// Exit code the tests look for.
pub const EXIT_CODE: i32 = 86;

pub fn point(name: &str) {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("PATROL_TEST_CRASH_AT").ok());
    if target.as_deref() == Some(name) {
        eprintln!("crash injection: exiting at {name}");
        std::process::exit(EXIT_CODE);
    }
}
