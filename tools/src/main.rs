//! imgtool: the offline analyser of CRIU-format image sets.
//!
//! One subcommand per file under `cmd/`; this file only parses the command line, sets up
//! logging (RUST_LOG) and prints errors as a chain with exit code 1.

mod analyse;
mod cmd;
mod json;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "imgtool",
    version,
    about = "Offline analyser of CRIU-format image sets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Decode(cmd::decode::Args),
    Encode(cmd::encode::Args),
    Show(cmd::show::Args),
    Info(cmd::info::Args),
    X(cmd::x::Args),
    Diff(cmd::diff::DiffArgs),
    Validate(cmd::validate::ValidateArgs),
    Mem(cmd::mem::MemArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Warnings (such as fields dropped from JSON) are shown unless RUST_LOG says otherwise.
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Decode(args) => cmd::decode::run(args),
        Command::Encode(args) => cmd::encode::run(args),
        Command::Show(args) => cmd::show::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::X(args) => cmd::x::run(args),
        Command::Diff(args) => cmd::diff::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Mem(args) => cmd::mem::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`imgtool mem DIR | head`) is not a failure of ours.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imgtool: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the error comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
