//! Everything a plugin says, bounded: its log lines, its name and the
//! texts the host keeps or prints for it (init errors, restore refusals,
//! trap messages).
//!
//! Why: a plugin's words end up in the host's log, in `summary.json`, in
//! service events and in metrics labels. Unbounded, a plugin could fill a
//! disk (10 MiB logged per call), multiply one long name into every line,
//! or hide terminal escapes in a message. So every line is cut and
//! cleaned, and each plugin instance has a log budget per call and per
//! second; what goes over it is dropped and counted, and the count is
//! logged (at most once per second) and reported in the host's statistics.

use crate::wit::Level;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest plugin name kept, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest plugin-supplied text the host keeps (errors, reasons), in bytes.
pub const MAX_TEXT: usize = 1024;
/// Longest log line kept, in bytes.
pub const MAX_LINE: usize = 4096;
/// Log lines a plugin may write in one call.
pub const LINES_PER_CALL: u32 = 100;
/// Log bytes a plugin may write in one call.
pub const BYTES_PER_CALL: usize = 64 << 10;
/// Log lines a plugin may write per second of wall time.
pub const LINES_PER_SECOND: u32 = 1000;
/// Log bytes a plugin may write per second of wall time.
pub const BYTES_PER_SECOND: usize = 1 << 20;

/// `text` cut to at most `max` bytes (on a character boundary, marked
/// with `…`) with control characters shown as escapes, so that nothing a
/// plugin says can move a terminal's cursor or forge a log line.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 4);
    for c in text.chars() {
        let piece_len = if c.is_control() {
            c.escape_default().count()
        } else {
            c.len_utf8()
        };
        if out.len() + piece_len > max {
            out.push('…');
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A plugin's name as the host shows it: trimmed, bounded, never empty.
pub(crate) fn plugin_name(name: &str, fallback: &str) -> String {
    let name = bounded(name.trim(), MAX_NAME);
    if name.is_empty() {
        bounded(fallback.trim(), MAX_NAME)
    } else {
        name
    }
}

/// One plugin instance's log: its name and its budget. Shared between the
/// `host.log` import and the WASI stdout/stderr sinks.
#[derive(Debug, Clone)]
pub(crate) struct PluginLog(Arc<Mutex<LogState>>);

#[derive(Debug)]
struct LogState {
    name: Arc<str>,
    call_lines: u32,
    call_bytes: usize,
    window_start: Instant,
    window_lines: u32,
    window_bytes: usize,
    /// Lines dropped over the budget since the instance started.
    dropped: u64,
    /// `dropped` when it was last reported in the log.
    reported: u64,
    last_report: Option<Instant>,
}

impl PluginLog {
    pub(crate) fn new(name: Arc<str>) -> Self {
        PluginLog(Arc::new(Mutex::new(LogState {
            name,
            call_lines: 0,
            call_bytes: 0,
            window_start: Instant::now(),
            window_lines: 0,
            window_bytes: 0,
            dropped: 0,
            reported: 0,
            last_report: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves nothing half-done worth
        // refusing over: the counters are plain numbers.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rename (after `init` gives the plugin's own name).
    pub(crate) fn set_name(&self, name: Arc<str>) {
        self.state().name = name;
    }

    /// A call starts: the per-call budget is full again.
    pub(crate) fn start_call(&self) {
        let mut s = self.state();
        s.call_lines = 0;
        s.call_bytes = 0;
    }

    /// A call ended: say how many lines were dropped, at most once a second.
    pub(crate) fn end_call(&self) {
        let mut s = self.state();
        if s.dropped == s.reported || s.last_report.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let newly = s.dropped - s.reported;
        s.reported = s.dropped;
        s.last_report = Some(Instant::now());
        let plugin = s.name.clone();
        drop(s);
        tracing::warn!(target: "wsched::plugin", plugin = %plugin, dropped = newly,
            "plugin log over its budget ({LINES_PER_CALL} lines or {BYTES_PER_CALL} bytes a call, {LINES_PER_SECOND} lines or {BYTES_PER_SECOND} bytes a second): lines dropped");
    }

    /// Lines dropped over the budget since the instance started.
    pub(crate) fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// Write one line at `level`, if the budget allows.
    pub(crate) fn line(&self, level: Level, message: &str) {
        let message = bounded(message, MAX_LINE);
        let plugin = {
            let mut s = self.state();
            if s.window_start.elapsed() >= Duration::from_secs(1) {
                s.window_start = Instant::now();
                s.window_lines = 0;
                s.window_bytes = 0;
            }
            let bytes = message.len();
            let over = s.call_lines >= LINES_PER_CALL
                || s.call_bytes + bytes > BYTES_PER_CALL
                || s.window_lines >= LINES_PER_SECOND
                || s.window_bytes + bytes > BYTES_PER_SECOND;
            if over {
                s.dropped += 1;
                return;
            }
            s.call_lines += 1;
            s.call_bytes += bytes;
            s.window_lines += 1;
            s.window_bytes += bytes;
            s.name.clone()
        };
        let plugin = &*plugin;
        match level {
            Level::Error => tracing::error!(target: "wsched::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "wsched::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "wsched::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "wsched::plugin", plugin, "{message}"),
            Level::Trace => tracing::trace!(target: "wsched::plugin", plugin, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary_and_escaped() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("ééééé", 5), "éé…");
        assert_eq!(bounded("a\x1b[2Jb\n", 64), "a\\u{1b}[2Jb\\n");
        let huge = "x".repeat(16 << 20);
        assert!(bounded(&huge, MAX_TEXT).len() <= MAX_TEXT + 3);
        assert_eq!(plugin_name("   ", "file-stem"), "file-stem");
        assert!(plugin_name(&"n".repeat(256 << 10), "f").len() <= MAX_NAME + 3);
    }

    #[test]
    fn the_budget_drops_and_counts_what_goes_over() {
        let log = PluginLog::new("p".into());
        log.start_call();
        for _ in 0..LINES_PER_CALL + 50 {
            log.line(Level::Trace, "x");
        }
        assert_eq!(log.dropped(), 50);
        // A new call has a new per-call budget.
        log.start_call();
        log.line(Level::Trace, "x");
        assert_eq!(log.dropped(), 50);
        // Big lines are cut, and the byte budget counts what is kept.
        log.start_call();
        let big = "y".repeat(10 << 20);
        for _ in 0..20 {
            log.line(Level::Trace, &big);
        }
        let kept = (BYTES_PER_CALL / (MAX_LINE + 3)) as u64;
        assert_eq!(log.dropped(), 50 + 20 - kept);
        log.end_call();
    }
}
