//! `restorer`: rebuilds a process tree from a CRIU-format image directory.
//!
//! # Mechanism
//!
//! No restorer blob is injected. The restorer creates every process itself with
//! `clone3` and `set_tid` (so pids and tids are the dumped ones), lets each new
//! process — still a copy of the restorer — set up what it can from inside (session,
//! group, cwd, signal actions, descriptors, threads), then drives it from outside
//! with ptrace: remote system calls executed at a tiny scratch area rebuild the
//! address space, `process_vm_writev` copies the pages straight from the mmapped
//! pages images, and `PTRACE_SETREGS`/`SETREGSET` install each thread's registers.
//! The scratch area is unmapped last, with the leader stopped at the exit of that
//! very `munmap`, and the threads are detached.
//!
//! Modules, in the order a restore uses them: [`plan`] (images → checked plan),
//! [`files`] (file objects opened in the restorer), [`spawn`] (the tree), [`inject`]
//! (ptrace and remote syscalls), [`maps`], [`memory`] (address space) with [`vdso`],
//! [`pages`] and [`uffd`], [`timens`], [`regs`] and
//! [`thread`] (the switch), [`restore`] (orchestration and cleanup), [`waiter`].

mod files;
mod inject;
mod maps;
mod memory;
mod pages;
mod plan;
mod regs;
mod restore;
mod spawn;
mod thread;
mod timens;
mod uffd;
mod vdso;
mod waiter;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "restorer",
    version,
    about = "Restore a process tree from CRIU-format images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Restore the tree dumped in an image directory.
    Restore {
        /// The image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the restored tree running and exit once it runs.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the root's pid to this file.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Give terminal descriptors the restorer's own terminal.
        #[arg(long)]
        shell_job: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    match cli.command {
        Command::Restore {
            dir,
            detached,
            pidfile,
            shell_job,
        } => {
            let opts = restore::Options {
                dir: &dir,
                shell_job,
            };
            let restored = restore::restore(&opts)
                .with_context(|| format!("restore from {} failed", dir.display()))?;
            tracing::info!(
                root = restored.root,
                processes = restored.processes,
                threads = restored.threads,
                ms = restored.elapsed.as_secs_f64() * 1000.0,
                "tree restored"
            );
            if let Some(path) = &pidfile {
                waiter::write_pidfile(path, restored.root)
                    .with_context(|| format!("writing pidfile {}", path.display()))?;
            }
            if detached {
                return Ok(());
            }
            waiter::wait_and_mirror(restored.root).context("waiting for the restored root")
        }
    }
}
