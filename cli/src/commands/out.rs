//! Standard output that goes quiet when its reader does: `rigmesh account |
//! head -1` must not end in a panic. Each line is written with its error
//! returned, so a closed pipe ends the command through the ordinary error
//! path (clean-up included) and `main` exits without a word. Lines to
//! stderr (progress, reasons) are dropped when nobody reads them.

use std::io::Write;

/// Writes one line to stdout.
pub(crate) fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// True when `err` comes from a reader that closed its end of stdout.
pub(crate) fn reader_gone(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` whose error (a closed pipe, most likely) is returned with
/// `?` from the calling function.
macro_rules! outln {
    () => {
        $crate::commands::out::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::commands::out::line(format_args!($($arg)*))?
    };
}

/// `eprintln!` that drops the line when stderr is closed instead of
/// panicking: there is nobody left to tell.
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}
