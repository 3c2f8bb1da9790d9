//! A progress line for long waits, on a terminal only: one line on stderr
//! rewritten in place with what is awaited and for how long, cleared when
//! the wait ends. Off a terminal (a log, a pipe) nothing is drawn, so
//! scripts read only the lines that say something.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub(crate) struct Progress {
    what: &'static str,
    started: Instant,
    on_terminal: bool,
    shown: bool,
}

impl Progress {
    /// A progress line about `what` (e.g. "connecting the devnet").
    pub(crate) fn new(what: &'static str) -> Self {
        Progress {
            what,
            started: Instant::now(),
            on_terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Whether lines are drawn (stderr is a terminal).
    pub(crate) fn on_terminal(&self) -> bool {
        self.on_terminal
    }

    /// Redraws the line with `detail` and the time waited so far.
    pub(crate) fn show(&mut self, detail: &str) {
        if !self.on_terminal {
            return;
        }
        let waited = super::text::duration(
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        );
        let mut err = std::io::stderr().lock();
        // Carriage return and erase-line: the line is replaced, not added.
        let _ = write!(err, "\r\x1b[2K{} ({waited}): {detail}", self.what);
        let _ = err.flush();
        self.shown = true;
    }

    /// Clears the line, so what is printed next starts on a clean one.
    pub(crate) fn done(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}
