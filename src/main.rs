//! `fleetmig`: parse the command line and run. No logic here.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    fleetmig::cli::run(fleetmig::cli::Cli::parse()).await
}
