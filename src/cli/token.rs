//! `berth token new`: a fresh API token, printed once, and the `[[auth.clients]]` lines that
//! let it in (DESIGN §4 "Clients and roles"). The assigner keeps only the token's SHA-256.

use std::process::ExitCode;

use crate::access::{Role, api_token_hash};
use crate::protocol::valid_name;

/// Flags of `berth token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a fresh token (once: it is not kept anywhere) and the lines to paste into the
    /// assigner's configuration.
    New(NewTokenArgs),
}

/// Flags of `berth token new`.
#[derive(Debug, clap::Args)]
pub struct NewTokenArgs {
    /// The client's name, recorded with the owner of the slots it holds.
    #[arg(long)]
    pub name: String,
    /// What it may do: `reader` reads; `client` also acquires, renews and releases;
    /// `operator` also acts on slots.
    #[arg(long, value_enum)]
    pub role: Role,
}

/// A fresh token and its configuration lines: `(token, toml)`.
pub fn new_client(name: &str, role: Role) -> (String, String) {
    let token = crate::lease::new_token();
    let lines = format!(
        "[[auth.clients]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{}\"\n",
        api_token_hash(&token),
        role.as_str()
    );
    (token, lines)
}

/// `berth token new`.
pub fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::New(args) = args.command;
    if !valid_name(&args.name) {
        anyhow::bail!(
            "--name must be 1 to 100 characters of ASCII letters, digits, '-' and '_' (it goes into slot records)"
        );
    }
    let (token, lines) = new_client(&args.name, args.role);
    println!(
        "# The token of client {:?}, shown this once; give it to the client (BERTH_TOKEN or --token-file):",
        args.name
    );
    println!("{token}");
    println!("# Add to the assigner's configuration (under [auth], with mode = \"tokens\"):");
    print!("{lines}");
    Ok(ExitCode::SUCCESS)
}
