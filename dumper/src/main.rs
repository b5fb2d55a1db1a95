//! `dumper`: checkpoint a running process tree into a CRIU-format image directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dumper",
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
        /// Image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Resume the tree after the dump (default: kill it).
        #[arg(long)]
        leave_running: bool,
        /// The tree is a shell job attached to a terminal.
        #[arg(long)]
        shell_job: bool,
        /// Send pages to a page server at ADDR:PORT instead of pages-N.img.
        #[arg(long, value_name = "ADDR:PORT")]
        page_server: Option<String>,
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

    match Cli::parse().command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            shell_job,
            page_server,
        } => {
            if page_server.is_some() {
                anyhow::bail!("--page-server is not implemented yet");
            }
            let opts = cryo_dumper::DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                shell_job,
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
