//! The `gateway` command: `run`, `check` and `demo` (see SPEC.md "Command line").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "gateway", version, about = "An API gateway and reverse proxy")]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or Ctrl-C; SIGHUP reloads the configuration.
    Run {
        /// Defaults to $GATEWAY_CONFIG, then ./gateway.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and exit: 0 and `ok: ...`, or 1 and one line per error.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start demo backends and the gateway on the repository's gateway.toml.
    Demo {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("GATEWAY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gateway.toml"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log reader that went away (a closed pipe) must not take requests down with it:
    // tracing-subscriber would otherwise report the failed write with `eprintln!`, which
    // panics on the same closed stderr, inside whatever request was logging.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config_path(config)),
        Command::Run { config } => serve(config_path(config), false),
        Command::Demo { config } => serve(config_path(config), true),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match gateway::load(path, None) {
        Ok(Some(loaded)) => {
            println!("{}", gateway_config::summary(&loaded.config));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(errors) => {
            for e in errors {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf, demo: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            if let Err(e) = gateway::demo::start_backends(&path).await {
                eprintln!("demo: {e}");
                return ExitCode::FAILURE;
            }
        }
        let handle = match gateway::start(&path).await {
            Ok(handle) => handle,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            let token = std::env::var("GATEWAY_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
            if let Err(e) = gateway::demo::start_self_registering(handle.admin_addr, token).await {
                eprintln!("demo: {e}");
            }
            gateway::demo::print_examples(handle.addr, handle.admin_addr);
        }
        signals.wait(&handle).await;
        tracing::info!("shutting down: draining in-flight requests");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Signal streams, installed before the gateway says it started so that a SIGTERM sent
/// right after the start line is never lost.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals { term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Serve SIGHUP reloads until SIGTERM or Ctrl-C.
    async fn wait(&mut self, handle: &gateway::GatewayHandle) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = self.term.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = handle.reload().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = handle;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
