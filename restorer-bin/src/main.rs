//! `restorer`: rebuilds a process tree from a CRIU-format image directory.
//!
//! # Mechanism
//!
//! No restorer blob is injected; every step is driven from outside with ptrace.
//!
//! 1. **Plan.** The image set is read and checked into a plan (tree, threads, VMAs,
//!    fds, registers); every pid and tid must be free, every mapped file present with
//!    its dumped size. Nothing is changed before this succeeds.
//! 2. **Tree.** The restorer forks the root with `clone3` and `set_tid`; every new
//!    process — still a copy of the restorer — enters its session and group, forks its
//!    own children the same way (so each keeps its dumped parent), sets umask, cwd,
//!    signal actions and its fd table (file objects opened once in the restorer and
//!    inherited, then `dup3`ed onto their numbers), creates its threads with their
//!    tids, reports on a pipe and parks with all signals blocked. With a
//!    `timens-0.img`, the tree is born in a time namespace that continues the dumped
//!    monotonic and boot-time clocks.
//! 3. **Memory.** Each leader is seized; remote system calls run at a scratch area
//!    (`syscall; int3`) mapped where nothing else is: the inherited rseq is
//!    unregistered, everything inherited is unmapped, the vdso family moves to its
//!    dumped place, every VMA is mapped at its address, the pages go in (large
//!    anonymous ranges with `UFFDIO_COPY`, otherwise copied inside the child or with
//!    `process_vm_writev`), protections and sticky madvise flags are set, and
//!    `PR_SET_MM_MAP` sets the mm fields and the exe link.
//! 4. **Switch.** Each thread sets its own `set_tid_address`, robust list,
//!    sigaltstack, rseq and name, gets its pending signals back, its xsave state and
//!    registers (a syscall frozen mid-restart is re-armed) and its blocked mask. The
//!    leader sets itimers, rlimits (never above the current hard limit), the
//!    parent-death signal, closes the restorer's descriptors, and unmaps the scratch
//!    area while stopped at that very syscall's exit, so it never returns into it.
//! 5. **Run.** Only when every process is complete are all threads detached. Without
//!    `-d` the restorer stays the root's parent and leaves as it leaves (exit code or
//!    signal); with `-d` it exits once the tree runs. Any failure after the first
//!    fork kills every process the restore created.
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
            if !detached {
                waiter::hold_forwarded_signals();
            }
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
