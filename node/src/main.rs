use std::process::ExitCode;

use clap::Parser;
use parley_node::cli::{Cli, Command};
use parley_node::config::Config;
use parley_node::{server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = cli.overrides().map_err(anyhow::Error::msg)?;
    if let Some(Command::DefaultConfig) = cli.command {
        print!("{}", toml::to_string_pretty(&Config::default())?);
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref(), overrides)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let telemetry = telemetry::init(&cfg)?;
            let result = server::run(cfg);
            telemetry.shutdown();
            result
        }
        Command::CheckConfig => {
            server::authenticator(&cfg)?;
            for var in parley_node::config::ignored_env_vars() {
                eprintln!("note: {var} is not a setting; ignored");
            }
            println!(
                "configuration ok:\n{}",
                toml::to_string_pretty(&cfg.redacted())?
            );
            Ok(())
        }
        Command::Migrate => {
            let telemetry = telemetry::init(&cfg)?;
            let result = server::migrate(&cfg);
            telemetry.shutdown();
            result
        }
        Command::Token { user, name, ttl } => {
            let (secret, _) = cfg.effective_jwt_secret();
            let secret = secret.ok_or_else(|| {
                anyhow::anyhow!("no jwt_secret configured: `token` signs HS256 tokens only")
            })?;
            let name = name.unwrap_or_else(|| user.clone());
            println!(
                "{}",
                sessions::auth::mint_hs256(&secret, &user, &name, ttl.as_secs())?
            );
            Ok(())
        }
        Command::DefaultConfig => Ok(()),
    }
}
