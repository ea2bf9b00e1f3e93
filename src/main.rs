//! The `kubetag` binary: parses the command line, runs it, maps the outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    match kubetag::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("kubetag: {:#}", failure.error());
            ExitCode::from(failure.code())
        }
    }
}
