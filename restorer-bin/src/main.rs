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
//!    inherited, then `dup3`ed onto their numbers; then its epoll registrations, which
//!    are keyed by those numbers), creates its threads with their
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
//! # Pages from a page server
//!
//! `restorer restore -D DIR --page-server ADDR:PORT [--checkpoint ID]` restores a tree
//! dumped with `dumper dump -t PID -D DIR --page-server ADDR:PORT`: DIR then holds every
//! image except `pagemap-*.img`/`pages-*.img`, which live in the server's store, keyed by
//! checkpoint and pid. The restorer needs a cryo `pageserver` (it negotiates cryo's
//! extensions to select a checkpoint and to be told plainly of a missing page).
//!
//! - Checkpoint: the one the dumper recorded in `DIR/page-server-checkpoint` (its id, told
//!   by the server's HELLO). `--checkpoint ID` is needed when DIR records none (a dump
//!   through a CRIU page server); one that differs from the record is refused, and without
//!   either nothing is guessed: the restore is refused. A checkpoint lacking a process (it
//!   has no page under the leader's dumped stack pointer) is refused.
//! - Ranges: the runs of `DIR/pagemap-PID.img` when there is one (every listed page must
//!   come back); otherwise every VMA that takes pages is walked with GET, since the
//!   protocol has no query listing a checkpoint's ranges (an empty answer = a page that
//!   was never dumped, left as the fresh mapping's zeroes).
//! - All pages are fetched before the first process is created (a missing server,
//!   checkpoint or page fails the restore with nothing started; errors name the peer,
//!   checkpoint, pid and vaddr), then written by the same path as local pages.
//!
//! Modules, in the order a restore uses them: [`plan`] (images → checked plan),
//! [`files`] (file objects opened in the restorer, with [`anonfd`] for eventfd, timerfd,
//! signalfd and epoll), [`spawn`] (the tree), [`inject`]
//! (ptrace and remote syscalls), [`maps`], [`memory`] (address space) with [`vdso`],
//! [`pages`] (fed by [`netpages`] with `--page-server`) and [`uffd`], [`timens`], [`regs`] and
//! [`thread`] (the switch), [`restore`] (orchestration and cleanup), [`waiter`].

mod anonfd;
mod files;
mod inject;
mod maps;
mod memory;
mod netpages;
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
        /// Take private pages from the page server at ADDR:PORT (a cryo `pageserver`
        /// the tree was dumped to with `dumper dump --page-server`).
        #[arg(long, value_name = "ADDR:PORT")]
        page_server: Option<String>,
        /// The page server's checkpoint to read (default: the one DIR records in
        /// `page-server-checkpoint`; required when DIR records none, refused when it
        /// differs from the record).
        #[arg(long, value_name = "ID", requires = "page_server")]
        checkpoint: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("restorer: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
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
            page_server,
            checkpoint,
        } => {
            let page_server = page_server.as_deref().map(resolve).transpose()?;
            let opts = restore::Options {
                dir: &dir,
                shell_job,
                page_server,
                checkpoint,
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

/// Resolves `ADDR:PORT` (a name or a literal address) to its first socket address.
fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("page server address {addr}"))?
        .next()
        .with_context(|| format!("page server address {addr} resolves to nothing"))
}
