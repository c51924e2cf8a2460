//! Command-line parsing of the examples: clap's checks (unknown or malformed
//! arguments are refused with a non-zero exit), with the password of any URL
//! clap echoes in its message masked. Included with
//! `#[path = "common/cli.rs"] mod cli;` (or `"../common/cli.rs"`).

/// The parsed arguments, or clap's message (URLs redacted) and its exit code.
pub fn parse<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        let text = outbox::secrets::redact_own_args_in(&e.render().to_string());
        if e.use_stderr() {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        std::process::exit(e.exit_code())
    })
}
