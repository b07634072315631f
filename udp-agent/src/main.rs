use std::process::ExitCode;

use udp_agent::{
    cli::Command,
    commands,
    config_file::{self, CliError},
    logging::{self, LogArgs},
    pipeline,
};

fn main() -> ExitCode {
    let cli = match config_file::parse() {
        Ok(cli) => cli,
        // Usage errors, --help and --version, printed and exited clap's way.
        Err(CliError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            // What clap exits with for a usage error.
            return ExitCode::from(2);
        }
    };
    let default_log = LogArgs::default();
    let log = match &cli.command {
        Command::Run(args) => &args.log,
        _ => &default_log,
    };
    if let Err(e) = logging::init(log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(pipeline::run(args))),
        Command::Ports(args) => commands::ports(&args),
        Command::Sources(args) => commands::sources(&args),
        Command::Limits(args) => commands::limits(&args),
        Command::Stats(args) => commands::stats(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
