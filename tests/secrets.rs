//! No secret in any output: whatever a password or a librdkafka setting's
//! value holds, and whichever error path it takes (URL parsing, connection
//! refused, wrong database, an unknown URL parameter, a URL typed where a
//! subcommand belongs, librdkafka refusing a setting or its name, the
//! environment and file variants), none of it reaches the stderr or stdout
//! of the relay, the benchmark or an example. Property-tested over passwords drawn from
//! every printable character, `/ @ : ? # %` and spaces and non-ASCII
//! included (docs/guarantees.md, "Secrets").
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, database_url, free_port, url_address};
use proptest::prelude::*;

/// Printable ASCII (delimiters of URLs and settings included), a space,
/// Latin-1, and a few wider characters.
const ANY: &str = "[ -~¡-ÿ€漢字🔑]{12,24}";
/// The same without `,` and `=`: a librdkafka setting's value, where `=`
/// separates the key and `,` separates settings in OUTBOX_KAFKA_CONFIG.
const SETTING_VALUE: &str = "[ -+\\--<>-~¡-ÿ€漢字🔑]{12,24}";

/// What the program printed (stdout and stderr), run with a time limit.
fn output_of(mut cmd: Command) -> String {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{cmd:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if start.elapsed() > Duration::from_secs(2) {
        eprintln!("slow ({:?}): {cmd:?}", start.elapsed());
    }
    let mut text = String::new();
    let mut bytes = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut bytes).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut bytes).unwrap();
    text.push_str(&String::from_utf8_lossy(&bytes));
    assert!(!child.wait().unwrap().success(), "{cmd:?} was expected to fail:\n{text}");
    text
}

/// The secret, its percent-encoded form, or any 8 characters of it in a row.
fn leak(output: &str, secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    let windows = chars.windows(8).map(|w| w.iter().collect::<String>());
    std::iter::once(encode(secret)).chain(windows).find(|piece| output.contains(piece.as_str()))
}

fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn relay(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("outbox-relay"));
    cmd.args(args).env_remove("DATABASE_URL").env_remove("OUTBOX_KAFKA_CONFIG").env("RUST_LOG", "debug");
    cmd
}

fn example(name: &str, url: &str) -> Command {
    let mut cmd = Command::new(binary(name));
    cmd.env("DATABASE_URL", url).env("RUST_LOG", "debug");
    cmd
}

fn check(secret: &str, what: &str, output: &str) -> Result<(), TestCaseError> {
    match leak(output, secret) {
        None => Ok(()),
        Some(piece) => Err(TestCaseError::fail(format!("{what}: {piece:?} of the secret is in the output:\n{output}"))),
    }
}

/// Database URLs with the secret as the password, every way they are given.
fn database_paths(secret: &str) -> Vec<(String, Command)> {
    let closed = free_port();
    let real = url_address(&database_url());
    let raw_closed = format!("postgres://app:{secret}@127.0.0.1:{closed}/orders");
    // PostgreSQL's own user, whom a trust-authenticated server lets in to
    // say the database does not exist (a password-checking one refuses it).
    let raw_wrong_db = format!("postgres://postgres:{secret}@{real}/no_such_database_for_secrets");
    let encoded_wrong_db = format!("postgres://postgres:{}@{real}/no_such_database_for_secrets", encode(secret));
    let typo = format!("postgres://app@{real}/orders?pasword={}", encode(secret));
    let file = std::env::temp_dir().join(common::unique("url"));
    std::fs::write(&file, &raw_closed).unwrap();
    let mut paths = vec![
        (
            "connection refused, --database-url".into(),
            relay(&["--database-url", &raw_closed, "migrate", "--db-connect-timeout", "300ms"]),
        ),
        ("wrong database, raw password".into(), relay(&["--database-url", &raw_wrong_db, "migrate"])),
        ("wrong database, encoded password".into(), relay(&["--database-url", &encoded_wrong_db, "status"])),
        ("unknown URL parameter".into(), relay(&["--database-url", &typo, "migrate"])),
        ("URL where a subcommand belongs".into(), relay(&[&raw_closed])),
        ("URL after an unknown flag".into(), relay(&["--bogus", &format!("--database-url={raw_closed}")])),
        (
            "run with a refused connection".into(),
            relay(&[
                "--database-url",
                &raw_closed,
                "--db-connect-timeout",
                "300ms",
                "run",
                "--http-addr",
                "127.0.0.1:0",
            ]),
        ),
    ];
    let mut env = relay(&["migrate", "--db-connect-timeout", "300ms"]);
    env.env("DATABASE_URL", &raw_closed);
    paths.push(("DATABASE_URL".into(), env));
    paths.push((
        "DATABASE_URL_FILE".into(),
        relay(&["--database-url-file", file.to_str().unwrap(), "migrate", "--db-connect-timeout", "300ms"]),
    ));
    paths.push(("order_service, wrong database".into(), example("order_service", &raw_wrong_db)));
    paths.push(("consumer_service, wrong database".into(), example("consumer_service", &raw_wrong_db)));
    paths.push(("outbox-bench, wrong database".into(), example("outbox-bench", &raw_wrong_db)));
    let mut positional = example("order_service", &raw_wrong_db);
    positional.arg(&raw_closed);
    paths.push(("order_service, URL as an argument".into(), positional));
    paths
}

/// librdkafka settings with the secret as a value (or as a whole setting).
fn kafka_paths(secret: &str) -> Vec<(String, Command)> {
    // A database that refuses at once, should a setting be accepted.
    let url = format!("postgres://app@127.0.0.1:{}/orders", free_port());
    let run = |extra: &[&str]| {
        let mut args =
            vec!["--database-url", url.as_str(), "--db-connect-timeout", "300ms", "run", "--http-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        relay(&args)
    };
    let dir = std::env::temp_dir().join(common::unique("kafka"));
    std::fs::create_dir_all(&dir).unwrap();
    let (typo_file, bare_file) = (dir.join("typo.properties"), dir.join("bare.properties"));
    std::fs::write(&typo_file, format!("sasl.username=relay\nsasl.pasword={secret}\n")).unwrap();
    std::fs::write(&bare_file, format!("sasl.username=relay\n{secret}\n")).unwrap();
    let mut env = run(&[]);
    env.env("OUTBOX_KAFKA_CONFIG", format!("linger.ms=1,sasl.pasword={secret}"));
    vec![
        ("-X with a mistyped secret name".into(), run(&["-X", &format!("sasl.pasword={secret}")])),
        ("-X with a refused value".into(), run(&["-X", &format!("security.protocol={secret}")])),
        ("-X with a refused number".into(), run(&["-X", &format!("linger.ms={secret}")])),
        ("-X without '='".into(), run(&["-X", secret])),
        ("--kafka-config= without '='".into(), run(&[&format!("--kafka-config={secret}")])),
        (
            "a password beside a refused setting".into(),
            run(&["-X", &format!("sasl.password={secret}"), "-X", "security.protocol=NOPE"]),
        ),
        ("OUTBOX_KAFKA_CONFIG".into(), env),
        ("settings file, mistyped name".into(), run(&["--kafka-config-file", typo_file.to_str().unwrap()])),
        ("settings file, line without '='".into(), run(&["--kafka-config-file", bare_file.to_str().unwrap()])),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn database_passwords_never_reach_the_output(secret in ANY) {
        for (what, cmd) in database_paths(&secret) {
            check(&secret, &what, &output_of(cmd))?;
        }
    }

    #[test]
    fn kafka_setting_values_never_reach_the_output(secret in SETTING_VALUE) {
        for (what, cmd) in kafka_paths(&secret) {
            check(&secret, &what, &output_of(cmd))?;
        }
    }
}

/// The property above would pass on a program that prints nothing: each
/// path must fail for the reason it is meant to exercise.
#[test]
fn every_path_fails_for_its_own_reason() {
    let secret = "S3cret/pa ss@w:rd";
    let expected = [
        ("connection refused, --database-url", "cannot connect"),
        ("wrong database, raw password", "no_such_database_for_secrets|authentication failed"),
        ("wrong database, encoded password", "no_such_database_for_secrets|authentication failed"),
        ("unknown URL parameter", "pasword"),
        ("URL where a subcommand belongs", "unrecognized subcommand"),
        ("URL after an unknown flag", "unexpected argument"),
        ("run with a refused connection", "cannot connect"),
        ("DATABASE_URL", "cannot connect"),
        ("DATABASE_URL_FILE", "cannot connect"),
        ("order_service, wrong database", "no_such_database_for_secrets|authentication failed"),
        ("consumer_service, wrong database", "no_such_database_for_secrets|authentication failed"),
        ("outbox-bench, wrong database", "no_such_database_for_secrets|authentication failed"),
        ("order_service, URL as an argument", "unexpected argument"),
    ];
    let paths = database_paths(secret);
    assert_eq!(paths.len(), expected.len());
    for ((what, cmd), (name, needle)) in paths.into_iter().zip(expected) {
        assert_eq!(what, name);
        let output = output_of(cmd);
        // A server that checks passwords refuses before it looks for the database.
        assert!(needle.split('|').any(|n| output.contains(n)), "{what}: expected {needle:?} in:\n{output}");
        assert_eq!(leak(&output, secret), None, "{what}: {output}");
    }
    // Spaces around it: librdkafka trims the value it quotes back.
    let secret = " S3cret/pa ss@w:rd ";
    let expected = [
        "no such librdkafka configuration property",
        "security.protocol",
        "linger.ms",
        "found no '='",
        "found no '='",
        "security.protocol",
        "sasl.pasword",
        "sasl.pasword",
        "line 2",
    ];
    let paths = kafka_paths(secret);
    assert_eq!(paths.len(), expected.len());
    for ((what, cmd), needle) in paths.into_iter().zip(expected) {
        let output = output_of(cmd);
        assert!(output.contains(needle), "{what}: expected {needle:?} in:\n{output}");
        assert_eq!(leak(&output, secret), None, "{what}: {output}");
        assert_eq!(leak(&output, secret.trim()), None, "{what}: {output}");
    }
}
