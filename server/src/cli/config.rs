//! The configuration file of `baton serve --config FILE`, and `baton
//! config check FILE`.
//!
//! The file is TOML with one key per `serve` flag, named like the flag
//! with `_` for `-` (`lease_ms` for `--lease-ms`). Precedence, highest
//! first: flags, `BATON_*` environment variables, the file, the built-in
//! defaults. Relative paths in the file are relative to the file's own
//! directory, so a file and the token and certificate files beside it can
//! move together. An unknown key is an error that names it and its line:
//! a misspelt setting must not fall back to its default silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use baton_server::settings;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::{AuthMode, ServeArgs};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Validate a configuration file as `baton serve --config FILE` would
    /// use it (with this environment's BATON_* variables): every key known,
    /// every value usable, the token and TLS files readable. Prints the
    /// settings in force; exits 1 naming the bad key otherwise.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// The file's keys; every one optional.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub store: Option<String>,
    pub lease_ms: Option<u64>,
    pub leader_lease_ms: Option<u64>,
    pub advertise: Option<String>,
    pub no_durable: Option<bool>,
    pub max_payload: Option<usize>,
    pub max_steps: Option<usize>,
    pub max_workers: Option<usize>,
    pub max_watches: Option<usize>,
    pub max_worker_concurrency: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub auth: Option<Auth>,
    pub tokens: Option<PathBuf>,
    pub allow_insecure: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// An address, or "off" (see `baton serve --help`).
    pub http: Option<String>,
    pub handshake_timeout_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    pub priority_aging_ms: Option<u64>,
    pub max_connections: Option<usize>,
    /// `[[schedule]]` entries: added, or replaced by name, at every start.
    #[serde(default)]
    pub schedule: Vec<ScheduleFile>,
}

/// A `[[schedule]]` entry of the file: a periodic schedule the broker adds
/// (or replaces, by name) at every start. Schedules added with `baton
/// schedule add` stay as they are; removing an entry from the file does not
/// remove its schedule (`baton schedule remove` does).
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    pub name: String,
    #[serde(default)]
    pub cron: String,
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub every_ms: u64,
    #[serde(default)]
    pub catch_up: u32,
    #[serde(default)]
    pub deadline_ms: u64,
    #[serde(default)]
    pub paused: bool,
    /// One task to submit: its name, with `args`, `kwargs` and `queue`.
    pub task: Option<String>,
    pub args: Option<toml::Value>,
    pub kwargs: Option<toml::Value>,
    pub queue: Option<String>,
    /// Or a whole chain, as `baton submit -f` reads one.
    pub chain: Option<toml::Value>,
}

impl ScheduleFile {
    /// The schedule as `PutSchedule` takes it.
    ///
    /// # Errors
    /// Neither or both of `task` and `chain`, or a chain that does not
    /// parse.
    pub fn to_schedule(&self) -> anyhow::Result<baton::pb::Schedule> {
        let name = &self.name;
        let json = |v: &Option<toml::Value>, empty: &str| -> anyhow::Result<String> {
            Ok(match v {
                Some(v) => serde_json::to_string(v)?,
                None => empty.to_owned(),
            })
        };
        let chain = match (&self.task, &self.chain) {
            (Some(task), None) => super::submit::request(&super::submit::ChainArgs {
                task: Some(task.clone()),
                file: None,
                args: json(&self.args, "[]")?,
                kwargs: json(&self.kwargs, "{}")?,
                queue: self.queue.clone(),
                heavy: false,
                context: Vec::new(),
                idempotency_key: None,
                unique_key: None,
            }),
            (None, Some(chain)) => {
                super::submit::ChainFile::parse(&json(&Some(chain.clone()), "")?, "chain")
                    .and_then(super::submit::ChainFile::into_request)
            }
            _ => Err(anyhow::anyhow!("give task (with args) or chain, not both")),
        }
        .with_context(|| format!("schedule {name:?}"))?;
        Ok(baton::pb::Schedule {
            name: name.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            every_ms: self.every_ms,
            chain: Some(chain),
            deadline_ms: self.deadline_ms,
            catch_up: self.catch_up,
            paused: self.paused,
        })
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    Tokens,
    Off,
}

impl FileConfig {
    /// Parses the text of `path`; errors name the key and its line.
    ///
    /// # Errors
    /// Unknown keys, values of the wrong type or out of range.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let mut config: FileConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (setting, value) in [
            (settings::LEASE_MS, config.lease_ms),
            (settings::HANDSHAKE_TIMEOUT_MS, config.handshake_timeout_ms),
            (settings::RETENTION_MS, config.retention_ms),
            (settings::PRIORITY_AGING_MS, config.priority_aging_ms),
            (settings::LEADER_LEASE_MS, config.leader_lease_ms),
        ] {
            if let Some(ms) = value {
                setting
                    .check(setting.key, ms)
                    .with_context(|| path.display().to_string())?;
            }
        }
        for (key, value) in [
            ("max_connections", config.max_connections),
            ("max_payload", config.max_payload),
            ("max_steps", config.max_steps),
            ("max_workers", config.max_workers),
            ("max_watches", config.max_watches),
            (
                "max_worker_concurrency",
                config.max_worker_concurrency.map(|n| n as usize),
            ),
        ] {
            if value == Some(0) {
                anyhow::bail!("{}: {key} must be at least 1", path.display());
            }
        }
        for entry in &config.schedule {
            let schedule = entry
                .to_schedule()
                .with_context(|| path.display().to_string())?;
            baton_server::scheduler::schedules::Timing::parse(
                &schedule.cron,
                schedule.every_ms,
                &schedule.timezone,
                0,
            )
            .map_err(|e| anyhow::anyhow!("{}: schedule {:?}: {e}", path.display(), entry.name))?;
        }
        if let Some(addr) = &config.advertise {
            baton_server::leader::check_advertise(addr)
                .map_err(|e| anyhow::anyhow!("{}: advertise: {e}", path.display()))?;
        }
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut config.data,
            &mut config.tokens,
            &mut config.tls_cert,
            &mut config.tls_key,
            &mut config.tls_client_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// When it cannot be read, or [`FileConfig::parse`] fails.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Self::parse(&text, path)
    }
}

/// Fills the `serve` settings that neither a flag nor an environment
/// variable gave from `file`.
pub fn merge(args: &mut ServeArgs, matches: &clap::ArgMatches, file: FileConfig) {
    let unset = |id: &str| {
        !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! fill {
        ($field:ident) => {
            if let Some(value) = file.$field
                && unset(stringify!($field))
            {
                args.$field = value;
            }
        };
        ($field:ident, optional) => {
            if let Some(value) = file.$field
                && unset(stringify!($field))
            {
                args.$field = Some(value);
            }
        };
    }
    fill!(listen);
    fill!(data);
    fill!(store, optional);
    fill!(lease_ms);
    fill!(leader_lease_ms);
    fill!(advertise, optional);
    fill!(no_durable);
    fill!(max_payload);
    fill!(max_steps);
    fill!(max_workers);
    fill!(max_watches);
    fill!(max_worker_concurrency);
    fill!(handshake_timeout_ms);
    fill!(retention_ms);
    fill!(priority_aging_ms);
    fill!(max_connections);
    args.schedules = file.schedule;
    fill!(allow_insecure);
    fill!(tokens, optional);
    fill!(tls_cert, optional);
    fill!(tls_key, optional);
    fill!(tls_client_ca, optional);
    fill!(metrics_listen, optional);
    fill!(http, optional);
    if let Some(format) = file.log_format
        && unset("log_format")
    {
        args.log_format = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .to_owned();
    }
    if let Some(auth) = file.auth
        && unset("auth")
    {
        args.auth = Some(match auth {
            Auth::Tokens => AuthMode::Tokens,
            Auth::Off => AuthMode::Off,
        });
    }
}

/// Applies `--config` (if given) to the `serve` settings.
///
/// # Errors
/// When the file cannot be read or is not a valid configuration.
pub fn apply(args: &mut ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    if let Some(path) = args.config.clone() {
        let file = FileConfig::load(&path)?;
        merge(args, matches, file);
    }
    Ok(())
}

/// Checks what `serve` would refuse at start, without starting.
///
/// # Errors
/// Naming the setting at fault.
pub fn check(args: &ServeArgs) -> anyhow::Result<()> {
    settings::LEASE_MS.check(settings::LEASE_MS.key, args.lease_ms)?;
    settings::HANDSHAKE_TIMEOUT_MS.check(
        settings::HANDSHAKE_TIMEOUT_MS.key,
        args.handshake_timeout_ms,
    )?;
    settings::RETENTION_MS.check(settings::RETENTION_MS.key, args.retention_ms)?;
    settings::PRIORITY_AGING_MS.check(settings::PRIORITY_AGING_MS.key, args.priority_aging_ms)?;
    settings::LEADER_LEASE_MS.check(settings::LEADER_LEASE_MS.key, args.leader_lease_ms)?;
    if let Some(addr) = &args.advertise {
        baton_server::leader::check_advertise(addr)
            .map_err(|e| anyhow::anyhow!("advertise: {e}"))?;
    }
    for (key, value) in [
        ("max_connections", args.max_connections),
        ("max_payload", args.max_payload),
        ("max_steps", args.max_steps),
        ("max_workers", args.max_workers),
        ("max_watches", args.max_watches),
        (
            "max_worker_concurrency",
            args.max_worker_concurrency as usize,
        ),
    ] {
        if value == 0 {
            anyhow::bail!("{key} must be at least 1");
        }
    }
    if let Some(url) = &args.store {
        check_store(url)?;
    } else if args.data.exists() && !args.data.is_dir() {
        anyhow::bail!("data: {} is not a directory", args.data.display());
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        anyhow::bail!("tls_cert and tls_key go together: give both or neither");
    }
    if args.tls_client_ca.is_some() && args.tls_cert.is_none() {
        anyhow::bail!("tls_client_ca needs tls_cert and tls_key");
    }
    crate::security(args)?;
    Ok(())
}

/// Checks a `store` setting: a PostgreSQL URL (the only store besides the
/// data directory's sled, for now).
///
/// # Errors
/// When it is not one.
pub fn check_store(url: &str) -> anyhow::Result<()> {
    let shown = baton_server::store::redact(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        anyhow::bail!("store: {shown:?} is not a postgres://USER@HOST:PORT/DB URL");
    }
    url.parse::<postgres::Config>()
        .map_err(|e| anyhow::anyhow!("store: {shown:?}: {e}"))?;
    Ok(())
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Check { file } = command;
    use clap::{CommandFactory, FromArgMatches};
    let path = file.display().to_string();
    let matches = crate::Cli::command()
        .try_get_matches_from(["baton", "serve", "--config", &path])
        .context("the BATON_* environment variables")?;
    let serve = matches
        .subcommand_matches("serve")
        .context("serve settings")?;
    let mut args = ServeArgs::from_arg_matches(serve)?;
    apply(&mut args, serve)?;
    check(&args).with_context(|| format!("{path} (with this environment)"))?;
    let show = |p: &Option<PathBuf>| {
        p.as_ref().map_or_else(
            || "(none)".to_owned(),
            |p| format!("{:?}", p.display().to_string()),
        )
    };
    println!("{path}: ok. Settings in force (flags > BATON_* > file > defaults):");
    println!("listen = \"{}\"", args.listen);
    println!("data = {:?}", args.data.display().to_string());
    println!(
        "store = {}",
        args.store.as_deref().map_or_else(
            || "(none: sled in data)".to_owned(),
            |url| format!("{:?}", baton_server::store::redact(url))
        )
    );
    println!("lease_ms = {}", args.lease_ms);
    println!("leader_lease_ms = {}", args.leader_lease_ms);
    println!(
        "advertise = {}",
        args.advertise.as_deref().map_or_else(
            || "(none: the listen address)".to_owned(),
            |a| format!("{a:?}")
        )
    );
    println!("no_durable = {}", args.no_durable);
    println!("max_payload = {}", args.max_payload);
    println!("max_steps = {}", args.max_steps);
    println!("max_workers = {}", args.max_workers);
    println!("max_watches = {}", args.max_watches);
    println!("max_worker_concurrency = {}", args.max_worker_concurrency);
    println!("handshake_timeout_ms = {}", args.handshake_timeout_ms);
    println!("retention_ms = {}", args.retention_ms);
    println!("priority_aging_ms = {}", args.priority_aging_ms);
    println!("max_connections = {}", args.max_connections);
    for s in &args.schedules {
        let when = if s.cron.is_empty() {
            format!("every_ms = {}", s.every_ms)
        } else {
            format!("cron = {:?}, timezone = {:?}", s.cron, s.timezone)
        };
        println!("[[schedule]] name = {:?}, {when}", s.name);
    }
    println!("log_format = \"{}\"", args.log_format);
    let auth = match (args.auth, &args.tokens) {
        (Some(AuthMode::Tokens), _) | (None, Some(_)) => "tokens",
        _ => "off",
    };
    println!("auth = \"{auth}\"");
    println!("tokens = {}", show(&args.tokens));
    println!("allow_insecure = {}", args.allow_insecure);
    println!("tls_cert = {}", show(&args.tls_cert));
    println!("tls_key = {}", show(&args.tls_key));
    println!("tls_client_ca = {}", show(&args.tls_client_ca));
    println!(
        "http = {}",
        args.http.as_deref().map_or_else(
            || format!("\"{}\" (default)", baton_server::http::DEFAULT_ADDR),
            |a| format!("\"{a}\"")
        )
    );
    println!(
        "metrics_listen = {}",
        args.metrics_listen
            .map_or_else(|| "(none)".to_owned(), |a| format!("\"{a}\""))
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_entries_parse_as_a_task_or_a_chain_and_bad_ones_are_named() {
        let text = r#"
            [[schedule]]
            name = "nightly"
            cron = "30 2 * * *"
            timezone = "Europe/Berlin"
            catch_up = 1
            task = "backup.run"
            args = ["all", 3]

            [[schedule]]
            name = "pulse"
            every_ms = 60000
            chain = { steps = [{ name = "a", args = [1], immutable = true }, { name = "b" }] }
        "#;
        let c = FileConfig::parse(text, Path::new("b.toml")).unwrap();
        let nightly = c.schedule[0].to_schedule().unwrap();
        assert_eq!(nightly.timezone, "Europe/Berlin");
        let step = &nightly.chain.as_ref().unwrap().steps[0];
        assert_eq!(
            (step.name.as_str(), step.args.as_str()),
            ("backup.run", r#"["all",3]"#)
        );
        let pulse = c.schedule[1].to_schedule().unwrap();
        assert_eq!(pulse.every_ms, 60_000);
        assert_eq!(pulse.chain.unwrap().steps.len(), 2);

        let bad = |entry: &str| {
            FileConfig::parse(&format!("[[schedule]]\n{entry}"), Path::new("b.toml"))
                .unwrap_err()
                .to_string()
        };
        let err = bad("name = \"x\"\ncron = \"61 * * * *\"\ntask = \"t\"");
        assert!(
            err.contains("b.toml: schedule \"x\"") && err.contains("not a cron expression"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            FileConfig::parse(
                "[[schedule]]\nname = \"y\"\nevery_ms = 5000",
                Path::new("b.toml")
            )
            .unwrap_err()
        );
        assert!(err.contains("give task (with args) or chain"), "{err}");
    }

    #[test]
    fn every_key_parses_and_paths_are_relative_to_the_file() {
        let text = r#"
            listen = "127.0.0.1:7171"
            data = "state"
            store = "postgres://baton:secret@127.0.0.1:5432/baton"
            lease_ms = 5000
            leader_lease_ms = 3000
            advertise = "broker-1.internal:7070"
            no_durable = false
            max_payload = 65536
            max_steps = 100
            max_workers = 50
            max_watches = 500
            max_worker_concurrency = 64
            log_format = "json"
            auth = "tokens"
            tokens = "/etc/baton/tokens.toml"
            allow_insecure = false
            tls_cert = "broker.pem"
            tls_key = "broker.key"
            tls_client_ca = "ca.pem"
            metrics_listen = "127.0.0.1:9090"
            http = "127.0.0.1:7072"
            handshake_timeout_ms = 5000
            max_connections = 2000
        "#;
        let c = FileConfig::parse(text, Path::new("/etc/baton/baton.toml")).unwrap();
        assert_eq!(c.data.as_deref(), Some(Path::new("/etc/baton/state")));
        assert_eq!(
            c.store.as_deref(),
            Some("postgres://baton:secret@127.0.0.1:5432/baton")
        );
        assert_eq!(
            c.tokens.as_deref(),
            Some(Path::new("/etc/baton/tokens.toml"))
        );
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.leader_lease_ms, Some(3000));
        assert_eq!(c.advertise.as_deref(), Some("broker-1.internal:7070"));
        assert_eq!(c.http.as_deref(), Some("127.0.0.1:7072"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn a_store_must_be_a_postgres_url_and_its_password_is_not_shown() {
        check_store("postgres://baton@127.0.0.1:5432/baton").unwrap();
        check_store("postgresql://baton:pw@localhost/baton?connect_timeout=5").unwrap();
        let e = check_store("mysql://root:hunter2@db/baton")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a postgres://") && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(
            baton_server::store::redact("postgres://u:hunter2@h:1/d"),
            "postgres://u:***@h:1/d"
        );
    }

    #[test]
    fn a_bad_key_is_named_with_its_line() {
        let e = FileConfig::parse(
            "listen = \"127.0.0.1:1\"\nleese_ms = 5\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("leese_ms") && e.contains("line 2"), "{e}");
        let e = FileConfig::parse("log_format = \"xml\"\n", Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml") && e.contains("line 1"), "{e}");
        let e = FileConfig::parse("leader_lease_ms = 0\n", Path::new("b.toml")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("leader_lease_ms is 0: it must be between 100 and 60000 ms"),
            "{e}"
        );
        let e = FileConfig::parse("advertise = \"no-port\"\n", Path::new("b.toml")).unwrap_err();
        assert!(e.to_string().contains("advertise"), "{e}");
        let e = FileConfig::parse("lease_ms = 0\n", Path::new("b.toml")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("b.toml: lease_ms is 0: it must be between 1 and 86400000 ms"),
            "{e}"
        );
    }
}
