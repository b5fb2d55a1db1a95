//! `pageserver`: serve CRIU's page-server protocol into a dedup + zstd store, and inspect or
//! export that store.
//!
//! ```text
//! pageserver [serve] --store DIR [--listen 127.0.0.1:27027] [--single-session] [--shutdown-grace 5]
//! pageserver list   --store DIR
//! pageserver stats  --store DIR [--checkpoint ID]
//! pageserver export --store DIR --checkpoint ID -D OUT [--parent-link PATH]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cryo_pageserver::export::{ExportOptions, export_checkpoint};
use cryo_pageserver::server::{self, ParentPolicy, ServerConfig, SessionEnd};
use cryo_pageserver::store::{CheckpointInfo, Store};
use tokio::signal::unix::{SignalKind, signal};

/// Default listen address. CRIU has no default page-server port (`--port` is required), so
/// cryo picks one, on loopback only.
const DEFAULT_LISTEN: &str = "127.0.0.1:27027";

/// How long a stopping server waits for the ingest workers of its sessions to finish.
const SHUTDOWN_WORKERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "pageserver",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accept page-server sessions (the default command).
    Serve(ServeArgs),
    /// List committed checkpoints.
    List(StoreArg),
    /// Show ingest statistics of the store or of one checkpoint.
    Stats {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        checkpoint: Option<u64>,
    },
    /// Write a checkpoint as CRIU pagemap-*.img + pages-*.img files.
    Export {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        checkpoint: u64,
        /// Output image directory.
        #[arg(short = 'D', long = "images-dir")]
        out: PathBuf,
        /// Make OUT/parent a symlink to this path (for checkpoints with a parent).
        #[arg(long)]
        parent_link: Option<PathBuf>,
        /// Resolve holes through the parent chain: a self-contained image set.
        #[arg(long)]
        flatten: bool,
        /// Write pagemaps exactly as CRIU 4.2's page server does (0 in the old page-count
        /// field, which CRIU before 4.2 reads; by default both fields hold the count).
        #[arg(long)]
        zero_compat_nr_pages: bool,
    },
}

#[derive(Args, Debug)]
struct StoreArg {
    /// Page store directory.
    #[arg(long)]
    store: PathBuf,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Page store directory (created if missing).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve one session, then exit with its result (like `criu page-server`).
    #[arg(long)]
    single_session: bool,
    /// Parent of a new checkpoint when the client does not choose one.
    #[arg(long, value_enum, default_value_t = ParentArg::None)]
    parent: ParentArg,
    /// Checkpoint GET requests read from (default: the newest).
    #[arg(long)]
    serve_checkpoint: Option<u64>,
    /// End a session whose peer sends nothing for this many seconds.
    #[arg(long, default_value_t = 600)]
    idle_timeout: u64,
    /// On SIGINT/SIGTERM, seconds sessions in flight get to finish (CLOSE) before they are
    /// aborted and their checkpoints discarded; a second signal aborts them at once.
    #[arg(long, default_value_t = server::DEFAULT_SHUTDOWN_GRACE.as_secs())]
    shutdown_grace: u64,
    /// zstd level for new pages.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    zstd_level: i32,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ParentArg {
    None,
    Latest,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pageserver: {err:#}");
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
        None => serve(cli.serve),
        Some(Cmd::Serve(args)) => serve(args),
        Some(Cmd::List(s)) => list(s),
        Some(Cmd::Stats { store, checkpoint }) => stats(store, checkpoint),
        Some(Cmd::Export {
            store,
            checkpoint,
            out,
            parent_link,
            flatten,
            zero_compat_nr_pages,
        }) => {
            let st = Store::open_read_only(&store.store)
                .with_context(|| format!("opening store {}", store.store.display()))?;
            let summary = export_checkpoint(
                &st,
                checkpoint,
                &out,
                &ExportOptions {
                    parent_link,
                    flatten,
                    zero_compat_nr_pages,
                },
            )?;
            println!(
                "exported checkpoint {checkpoint}: {} files, {} pages, {} pages left as holes",
                summary.files.len(),
                summary.pages,
                summary.hole_pages
            );
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let Some(dir) = args.store else {
        bail!("--store DIR is required to serve")
    };
    let store = Store::open_with_level(&dir, args.zstd_level)
        .with_context(|| format!("opening store {}", dir.display()))?;
    let config = Arc::new(ServerConfig {
        store,
        parent_policy: match args.parent {
            ParentArg::None => ParentPolicy::None,
            ParentArg::Latest => ParentPolicy::Latest,
        },
        serve_checkpoint: args.serve_checkpoint,
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
    });
    // Kept to close the index once every session and worker has let go of it.
    let store = Arc::clone(&config.store);
    let grace = std::time::Duration::from_secs(args.shutdown_grace);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shown = dir.display().to_string();
    let result = rt.block_on(async move {
        // Handlers first, so a signal that arrives once the address is announced is caught.
        let (stop_tx, stop) = tokio::sync::watch::channel(0u32);
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sigint.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "shutdown signal received");
                stop_tx.send_modify(|n| *n += 1);
            }
        });
        let listener = server::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let local = listener.local_addr()?;
        tracing::info!(listen = %local, store = %shown, "page server ready");
        // Tools that start us with port 0 read the real address from stdout.
        println!("listening on {local}");
        let served = server::serve_until(listener, config, args.single_session, stop, grace)
            .await
            .with_context(|| format!("accepting on {local}"))?;
        match served {
            Some(Ok(SessionEnd::Committed(info))) => {
                println!("checkpoint {} committed", info.id);
                Ok(())
            }
            Some(Ok(SessionEnd::Closed)) | None => Ok(()),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("session failed")),
        }
    });
    // Ingest workers of aborted sessions end as their channels close; wait for them (bounded)
    // so that this is the last reference to the store.
    rt.shutdown_timeout(SHUTDOWN_WORKERS_TIMEOUT);
    match Arc::try_unwrap(store) {
        Ok(store) => {
            store
                .close()
                .with_context(|| format!("closing store {}", dir.display()))?;
            tracing::info!(store = %dir.display(), "store closed cleanly; page server stopped");
        }
        Err(store) => tracing::warn!(
            store = %dir.display(),
            references = Arc::strong_count(&store),
            "store still in use at exit: its index is left unclean and is repaired on the next open"
        ),
    }
    result
}

fn list(s: StoreArg) -> anyhow::Result<()> {
    let store = Store::open_read_only(&s.store)
        .with_context(|| format!("opening store {}", s.store.display()))?;
    println!(
        "{:>6} {:>6} {:>8} {:>10} {:>10} peer",
        "id", "parent", "pagemaps", "pages", "stored"
    );
    for c in store.list()? {
        println!(
            "{:>6} {:>6} {:>8} {:>10} {:>10} {}",
            c.id,
            c.parent.map_or("-".into(), |p| p.to_string()),
            c.pagemaps,
            c.stats.pages_received,
            human(c.stats.stored_bytes),
            c.peer
        );
    }
    Ok(())
}

fn stats(s: StoreArg, checkpoint: Option<u64>) -> anyhow::Result<()> {
    let store = Store::open_read_only(&s.store)
        .with_context(|| format!("opening store {}", s.store.display()))?;
    let cps: Vec<CheckpointInfo> = match checkpoint {
        Some(id) => vec![store.checkpoint(id)?],
        None => store.list()?,
    };
    for c in &cps {
        let st = &c.stats;
        println!("checkpoint {}", c.id);
        println!("  pages received   {}", st.pages_received);
        println!("  zero pages       {}", st.zero_pages);
        println!("  deduplicated     {}", st.dedup_pages);
        println!("  unique new pages {}", st.new_pages);
        println!("  parent/lazy      {}/{}", st.parent_pages, st.lazy_pages);
        println!("  raw bytes        {}", human(st.raw_bytes()));
        println!("  stored bytes     {}", human(st.stored_bytes));
        let ratio = |num: f64, den: u64| {
            if den == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", num / den as f64)
            }
        };
        let nonzero = st.pages_received - st.zero_pages;
        println!("  dedup ratio      {}", ratio(nonzero as f64, st.new_pages));
        println!(
            "  compression      {}",
            ratio((st.new_pages * 4096) as f64, st.stored_bytes)
        );
        println!(
            "  overall ratio    {}",
            ratio(st.raw_bytes() as f64, st.stored_bytes)
        );
        println!(
            "  ingest           {:.1} MiB/s over {:.3} s",
            st.mib_per_s(),
            st.seconds
        );
    }
    if checkpoint.is_none() {
        let t = store.totals()?;
        println!(
            "store: {} checkpoints, {} unique pages, {} in segments",
            t.checkpoints,
            t.unique_pages,
            human(t.segment_bytes)
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
