//! Printing for the command-line tools. A reader that closed the pipe early
//! (`plantgate-firewall status | head -1`) wanted no more: the process ends quietly with
//! success instead of panicking as `println!` does. Any other write error ends it with
//! status 1 and one line on standard error.

use std::io::Write;

/// Writes `args` to the locked standard output and flushes, so that a failed write is
/// seen here and not lost at exit. Use through [`outln!`](crate::outln) and [`out!`](crate::out).
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("cannot write to standard output: {err}");
            std::process::exit(1);
        }
    }
}

/// `println!` that ends the process quietly on a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the process quietly on a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}
