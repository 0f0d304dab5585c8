//! `sandboxctl`: the command line of sand-boxer.
//!
//! Exit codes: 0 success, 1 the API refused or the sandbox failed, 2 usage
//! errors, 3 the daemon could not be reached.
#![forbid(unsafe_code)]

mod access_cmd;
mod args;
mod commands;
mod complete;
mod hosts_cmd;
mod output;
mod render;
mod table;
mod template_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sandboxctl::Client;

use crate::args::{Cli, Command, TokenCommand};
use crate::commands::CliError;

fn main() -> ExitCode {
    // A shell asking for completions (`COMPLETE=bash sandboxctl -- ...`)
    // is answered here and the process ends; nothing else runs.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    // These print a config block and a shell script: no JSON to give.
    if cli.json
        && matches!(
            cli.command,
            Command::Token(TokenCommand::New { .. }) | Command::Completions { .. }
        )
    {
        eprintln!("error: `--json` is not taken by `completions` or `token new` (they print a shell script and a config block)");
        return ExitCode::from(2);
    }
    if let Command::Token(TokenCommand::New {
        actor_type,
        actor,
        project,
        role,
    }) = &cli.command
    {
        return match sandboxctl::token::new_token() {
            Ok(token) => {
                commands::emit(&sandboxctl::token::config_block(
                    &token, actor_type, actor, project, role,
                ));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Completions { shell } = cli.command {
        // The registration: the shell calls sandboxctl back for each
        // completion, which asks the daemon for ids (`complete.rs`).
        return match complete::registration(shell) {
            Ok(script) => {
                commands::emit(&script);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let json = cli.json;
    let result = match Client::new(&cli.url, cli.token) {
        Ok(client) => commands::run(&client, cli.command, json).await,
        Err(e) => Err(CliError::from(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, CliError::Exit(_)) {
                // With --json the error is on stdout too, as problem+json,
                // for a script that parses stdout (a sandbox that failed
                // was printed itself: one document).
                if json && !matches!(e, CliError::Failed(_)) {
                    commands::emit(&format!("{}\n", e.problem_json()));
                }
                commands::note(&e.message());
            }
            ExitCode::from(e.exit_code())
        }
    }
}
