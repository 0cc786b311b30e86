//! `fleetmig`: parse the command line, set up logging, run. No logic here.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = fleetmig::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("FLEETMIG_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.global.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    fleetmig::cli::run(cli).await
}
