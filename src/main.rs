//! The `sitegate` binary: parse the command line, run the library, map the outcome to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = sitegate::cli::Cli::parse();
    let code = sitegate::cli::run(cli);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
