//! The `kubetag` binary: parses the command line, runs it, maps the outcome to an exit code.

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    match kubetag::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "kubetag: {:#}", failure.error());
            ExitCode::from(failure.code())
        }
    }
}
