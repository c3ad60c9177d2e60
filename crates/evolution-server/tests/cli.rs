//! The command line: `--help`, `--version`, the commands and clap's errors.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn server(args: &[&str]) -> Output {
    server_with(args, &[])
}

fn server_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_command_and_the_variable_groups() {
    for flag in ["--help", "-h", "help"] {
        let out = server(&[flag]);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{flag}: {help}");
        for needle in [
            "Usage: evolution-server [OPTIONS] [COMMAND]",
            "serve",
            "the default when no command is given",
            "config check",
            "--config <FILE>",
            "--version",
            "docs/configuration.md",
            "SERVER_*",
            "DATABASE_CONNECTION_URI, OUTBOX_*",
            "WEBHOOK_*",
            "WEBSOCKET_*, CACHE_REDIS_*",
            "RABBITMQ_*, SQS_*, KAFKA_*, NATS_*, PUSHER_*",
            "Channels in this build: ",
        ] {
            assert!(help.contains(needle), "{flag}: missing `{needle}` in:\n{help}");
        }
    }
    let out = server(&["config", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(
        help.contains("check") && help.contains("effective value"),
        "{help}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    for flag in ["--version", "-V"] {
        let out = server(&[flag]);
        assert!(out.status.success());
        assert_eq!(
            text(&out.stdout).trim(),
            format!("evolution-server {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn a_wrong_argument_is_clap_s_error_with_exit_status_2() {
    for (args, needle) in [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
        (&["config"][..], "Usage: evolution-server config"),
        (&["config", "chek"][..], "unrecognized subcommand 'chek'"),
        (&["--config"][..], "a value is required for '--config <FILE>'"),
    ] {
        let out = server(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: missing `{needle}` in:\n{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `serve` and no command are the same: both read the configuration first (an invalid one is
/// exit status 2, naming the variable).
#[test]
fn serve_is_the_default_command() {
    for args in [
        &[][..],
        &["serve"][..],
        &["serve", "--config", "/nonexistent/evolution.toml"][..],
    ] {
        let out = server_with(args, &[("SERVER_PORT", "http")]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let needle = if args.len() > 1 {
            "no such file"
        } else {
            "SERVER_PORT=`http`"
        };
        assert!(err.contains(needle), "{args:?}: missing `{needle}` in:\n{err}");
    }
}

/// `--config` is accepted before or after the command, as before clap.
#[test]
fn config_check_reads_the_file_given_anywhere() {
    let dir = std::env::temp_dir().join(format!("evo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("evolution.toml");
    std::fs::write(&file, "server_port = 9123\n").unwrap();
    let path = file.to_str().unwrap();
    for args in [
        &["config", "check", "--config", path][..],
        &["--config", path, "config", "check"][..],
        &["-c", path, "config", "check"][..],
    ] {
        let out = server(args);
        let report = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(report.contains("SERVER_PORT=9123"), "{args:?}: {report}");
        assert!(report.ends_with("# configuration is valid\n"), "{report}");
    }
    let out = server(&[
        "config",
        "check",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such file"));
    std::fs::remove_dir_all(&dir).unwrap();
}
