//! `parley-loadtest`: a load generator for Parley's `/ws` protocol and Socket.IO v4 servers.
//! Every run targets loopback only and is bounded in connections and time.

mod chat;
mod chat_conn;
mod chat_report;
mod chat_shard;
mod cli;
mod connect;
mod failover;
mod failover_client;
mod failover_conn;
mod failover_ledger;
mod failover_nodes;
mod failover_report;
mod failover_sender;
mod frame;
mod history;
mod net;
mod pacing;
mod plot;
mod progress;
mod proto;
mod ramp;
mod report;
mod series;
mod sio;
mod stats;
mod sys;
mod token;
mod worker;
mod ws;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parley-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open and hold N idle authenticated connections; connect latency, server KiB/conn.
    Connect(connect::Args),
    /// Rooms × members with paced senders; end-to-end latency, delivery, CPU/delivery.
    Chat(chat::Args),
    /// Join latency of rooms with history.
    History(history::Args),
    /// Chat steps at a rising rate: the highest rate with delivery ≥ 99.9 % and p99 ≤ 50 ms.
    Ramp(ramp::Args),
    /// Chat traffic while cluster nodes are killed (-9) and restarted: lost, duplicated and
    /// out-of-order acknowledged messages, recovery time.
    Failover(failover::Args),
    /// Internal: one worker process of a `connect` or `chat` run.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Worker { spec } => worker::run(&spec),
        Cmd::Connect(a) => {
            let rt = worker::runtime(a.common.threads as usize)?;
            rt.block_on(connect::run(a))
        }
        Cmd::Chat(a) => worker::runtime(1)?.block_on(chat::run(a)),
        Cmd::Ramp(a) => worker::runtime(1)?.block_on(ramp::run(a)),
        Cmd::Failover(a) => worker::runtime(a.threads as usize)?.block_on(failover::run(a)),
        Cmd::History(a) => {
            let rt = worker::runtime(a.common.threads as usize)?;
            rt.block_on(history::run(a))
        }
    }
}
