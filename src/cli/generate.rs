//! `berth completions SHELL` and `berth man`: generated from the CLI's definition, so they
//! never drift from the flags.

use std::io::Write;

/// Shells `berth completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Flags of `berth completions`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script of `command` for `shell` to `out`.
pub fn completions(shell: Shell, command: &mut clap::Command, out: &mut dyn Write) {
    let name = command.get_name().to_owned();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, command, name, out);
}

/// Flags of `berth man`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// The subcommand whose page to write (`berth man run`); the main page without one.
    pub command: Option<String>,
}

/// Writes the man page (roff, section 1) of `command`, or of its subcommand `sub`
/// (named `berth-SUB`, as `man berth-run` finds it).
pub fn man(command: clap::Command, sub: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let command = command.disable_help_subcommand(true);
    let page = match sub {
        None => command,
        Some(name) => {
            let found = command.find_subcommand(name).ok_or_else(|| {
                anyhow::anyhow!("no subcommand {name:?}; `berth --help` lists them")
            })?;
            let full = format!("{}-{}", command.get_name(), found.get_name());
            found.clone().name(full)
        }
    };
    clap_mangen::Man::new(page).render(out)?;
    Ok(())
}
