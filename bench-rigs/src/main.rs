//! `vortex-bench`: the benchmark front end.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use vortex_bench::nop::{self, NopBenchConfig, NopMode};
use vortex_config::{ApplianceConfig, LeuCount, Topology};
use vortex_io::RingConfig;

#[derive(Debug, Parser)]
#[command(name = "vortex-bench", version, about = "VORTEX benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// io_uring NOP round trips per LEU and the context switches during the run.
    Nop {
        /// Appliance config for the LEU mapping and ring settings (default: built-in).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the LEU count.
        #[arg(long)]
        leus: Option<u16>,
        /// Measured seconds per mode.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// NOPs per submission.
        #[arg(long, default_value_t = 32)]
        batch: u32,
        /// Also run with SQPOLL (a kernel thread per ring; needs a spare CPU per LEU).
        #[arg(long)]
        sqpoll: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Nop {
            config,
            leus,
            seconds,
            batch,
            sqpoll,
            json,
        } => {
            let mut appliance = match &config {
                Some(path) => ApplianceConfig::load(path)?,
                None => ApplianceConfig::default(),
            };
            if let Some(count) = leus {
                appliance.leu.count = LeuCount::Fixed(count);
                appliance.leu.cores.clear();
            }
            let topology = Topology::discover()?;
            let mapping = appliance
                .plan_leus(&topology)
                .context("planning the LEUs")?;
            anyhow::ensure!(seconds > 0.0, "--seconds must be positive");
            let bench = NopBenchConfig {
                mapping,
                ring: RingConfig::from_config(&appliance.io_uring),
                batch,
                duration: Duration::from_secs_f64(seconds),
                warmup: Duration::from_millis(500),
            };
            let mut modes = vec![NopMode::Tuned, NopMode::Plain];
            if sqpoll {
                modes.push(NopMode::Sqpoll);
            }
            let results: Vec<_> = modes
                .into_iter()
                .map(|mode| nop::run_mode(&bench, mode))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print!("{}", nop::render(&results, &command_line));
            }
        }
    }
    Ok(())
}
