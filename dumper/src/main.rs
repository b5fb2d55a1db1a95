//! `dumper`: checkpoint a running process tree into a CRIU-format image directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dumper",
    version,
    about = "Checkpoint a live process tree into CRIU-format images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Freeze the tree rooted at PID and write its images to DIR.
    Dump {
        /// Root of the tree.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created if missing; refused if it already holds images).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Resume the tree after the dump (default: kill it, then wait up to 5 s until
        /// every killed task has exited; the dumper is not their parent, so their pids
        /// are free for a restore only once the parent reaps them).
        #[arg(long)]
        leave_running: bool,
        /// The tree is a shell job attached to a terminal.
        #[arg(long)]
        shell_job: bool,
        /// Send pages to a page server at ADDR:PORT instead of pages-N.img.
        #[arg(long, value_name = "ADDR:PORT")]
        page_server: Option<String>,
        /// The page server is CRIU's own (`criu page-server`, one session only): speak
        /// nothing but CRIU's protocol, with the request headers of that CRIU version
        /// (4.2, the default, or 4.1 and older). cryo's HELLO is then not sent, so DIR
        /// records no checkpoint: restore from the pages CRIU's server wrote.
        #[arg(long, requires = "page_server", value_name = "VERSION", num_args = 0..=1,
              default_missing_value = "4.2", value_parser = ["4.2", "4.1"])]
        criu_page_server: Option<String>,
    },
}

/// Parent of `pid` from /proc, or 0.
fn parent_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Whether `pid` is `root` or one of its descendants.
fn in_tree_of(mut pid: i32, root: i32) -> bool {
    while pid > 1 {
        if pid == root {
            return true;
        }
        pid = parent_of(pid);
    }
    pid == root
}

/// A dumper started from inside the tree it dumps (`dumper dump -t $$`, CRaC's flow)
/// leaves the tree first, so that it is never part of what it freezes: the invoking
/// process forks, the child forks the worker and exits, and the worker, re-parented out
/// of the tree, does the dump. The invoking process stays in the tree, blocked on a pipe
/// from the worker, and is dumped with it; so the command returns only with a result:
///
/// - `--leave-running`: the worker writes the outcome (one byte) and the command exits 0
///   or 1 once the tree runs on;
/// - default (kill): the command dies with the tree, and returns 0 after a restore, when
///   the restored pipe has no writer left (EOF) and DIR holds a complete dump.
///
/// Returns, in the worker, the pipe to write the outcome to.
fn leave_tree(root: i32, dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use nix::unistd::{ForkResult, fork, getpid, getppid};
    use std::io::Read;

    let (result_read, result_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("result pipe")?;
    // SAFETY: the process is single-threaded here (nothing has spawned a thread yet),
    // so the child may run arbitrary code after fork.
    match unsafe { fork() }.context("first fork")? {
        ForkResult::Parent { child } => {
            drop(result_write);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut outcome = std::fs::File::from(result_read);
            let mut byte = [0u8; 1];
            let status = loop {
                match outcome.read(&mut byte) {
                    Ok(1) => break i32::from(byte[0]),
                    Ok(_) if cryo_dumper::dump::is_complete(dir) => {
                        eprintln!("dumper: restored from the checkpoint in {}", dir.display());
                        break 0;
                    }
                    Ok(_) => {
                        eprintln!("dumper: the dump worker ended without a result");
                        break 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("dumper: waiting for the dump worker: {e}");
                        break 1;
                    }
                }
            };
            std::process::exit(status);
        }
        ForkResult::Child => {}
    }
    drop(result_read);
    nix::unistd::setsid().context("setsid")?;
    let intermediate = getpid().as_raw();
    // SAFETY: still single-threaded, as above.
    match unsafe { fork() }.context("second fork")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }

    // The invoking process reaps the intermediate one before it waits on the pipe: no
    // zombie of ours is left in the tree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while getppid().as_raw() == intermediate
        || std::path::Path::new(&format!("/proc/{intermediate}")).exists()
    {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the intermediate dumper process {intermediate} was not reaped within 10 s"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if in_tree_of(getpid().as_raw(), root) {
        anyhow::bail!("still inside the tree of {root} after the double fork (a subreaper?)");
    }
    Ok(std::fs::File::from(result_write))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dumper: {err:#}");
            match cryo_dumper::interrupt::requested() {
                // As a shell reports a death by that signal, but the tree was let go
                // as it was first.
                Some(sig) => {
                    eprintln!(
                        "dumper: the tree was released as it was; nothing complete was written"
                    );
                    std::process::ExitCode::from(128 + sig as u8)
                }
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    cryo_dumper::interrupt::install().context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
    let mut outcome = None;
    if let Some(Command::Dump { pid, dir, .. }) = Cli::try_parse().ok().map(|c| c.command)
        && in_tree_of(std::process::id() as i32, pid)
    {
        outcome = Some(leave_tree(pid, &dir)?);
    }
    let result = dump_command();
    if let Some(mut pipe) = outcome {
        // The invoking process exits with this (after a --leave-running dump; a killed
        // tree has nobody left to read it).
        let _ = std::io::Write::write_all(&mut pipe, &[u8::from(result.is_err())]);
    }
    result
}

fn dump_command() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    match Cli::parse().command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            shell_job,
            page_server,
            criu_page_server,
        } => {
            let page_server = match page_server {
                Some(addr) => Some(
                    std::net::ToSocketAddrs::to_socket_addrs(&addr)
                        .with_context(|| format!("page server address {addr}"))?
                        .next()
                        .with_context(|| {
                            format!("page server address {addr} resolves to nothing")
                        })?,
                ),
                None => None,
            };
            let criu_page_server = criu_page_server.map(|v| match v.as_str() {
                "4.2" => cryo_dumper::CriuWire::V4_2,
                _ => cryo_dumper::CriuWire::Legacy,
            });
            let opts = cryo_dumper::DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                shell_job,
                page_server,
                criu_page_server,
            };
            let summary = cryo_dumper::dump(&opts)
                .with_context(|| format!("dump of {pid} into {} failed", dir.display()))?;
            println!(
                "dumped {} processes, {} threads, {} pages; frozen {:.3} s, pages {:.3} s, total {:.3} s",
                summary.processes,
                summary.threads,
                summary.pages_written,
                summary.frozen.as_secs_f64(),
                summary.memdump.as_secs_f64(),
                summary.total.as_secs_f64()
            );
            Ok(())
        }
    }
}
