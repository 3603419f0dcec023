//! `baton schedule add|list|pause|resume|remove`: periodic schedules.

use std::process::ExitCode;
use std::time::Duration;

use baton::pb;
use serde_json::json;

use super::output::{self, print_json, table};
use super::submit::{self, ChainArgs};
use super::{Conn, usage};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Add a schedule (or replace the one with the same name): the chain
    /// given as for `baton submit` is submitted at every fire time.
    Add(Box<AddArgs>),
    /// List schedules with their next fire times.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop firing; fire times passed while paused are skipped.
    Pause {
        /// The schedule's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Fire again, from the next fire time on.
    Resume {
        /// The schedule's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a schedule (its chains are left alone).
    Remove {
        /// The schedule's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["cron", "every"])))]
pub struct AddArgs {
    /// The schedule's name (letters, digits and "._:-").
    pub name: String,
    /// A cron expression: "MIN HOUR DAY MONTH WEEKDAY", or with seconds
    /// first (quote it).
    #[arg(long)]
    pub cron: Option<String>,
    /// The cron expression's IANA time zone, like Europe/Berlin [default:
    /// UTC].
    #[arg(long = "tz", requires = "cron")]
    pub timezone: Option<String>,
    /// Or fire every this many seconds (at least 1).
    #[arg(long, value_parser = super::seconds, conflicts_with = "cron")]
    pub every: Option<Duration>,
    /// Fire times missed while the broker was down: fire the latest N of
    /// them (0 skips them all).
    #[arg(long, default_value_t = 0)]
    pub catch_up: u32,
    /// Give each chain this many seconds after it is submitted.
    #[arg(long, value_parser = super::seconds)]
    pub deadline: Option<Duration>,
    /// Add it paused.
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs a `baton schedule` subcommand.
///
/// # Errors
/// Bad input ([`Usage`](super::Usage)), or what the broker refused.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add(args) => {
            let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let every_ms = args.every.map_or(0, millis);
            if args.every.is_some() && every_ms == 0 {
                return Err(usage("--every must be at least 1 second"));
            }
            let schedule = pb::Schedule {
                name: args.name.clone(),
                cron: args.cron.clone().unwrap_or_default(),
                timezone: args.timezone.clone().unwrap_or_default(),
                every_ms,
                chain: Some(submit::request(&args.chain)?),
                deadline_ms: args.deadline.map_or(0, millis),
                catch_up: args.catch_up,
                paused: args.paused,
            };
            let conn = &args.conn;
            let client = conn.connect().await?;
            let info = client
                .admin()
                .put_schedule(schedule)
                .await
                .map_err(|e| conn.error(e))?;
            print_schedules(&[info], conn.json);
        }
        Command::List { conn } => {
            let client = conn.connect().await?;
            let schedules = client
                .admin()
                .list_schedules()
                .await
                .map_err(|e| conn.error(e))?;
            print_schedules(&schedules, conn.json);
            if schedules.is_empty() && !conn.json {
                println!("(no schedule)");
            }
        }
        Command::Pause { name, conn } => pause(&name, true, &conn).await?,
        Command::Resume { name, conn } => pause(&name, false, &conn).await?,
        Command::Remove { name, conn } => {
            let client = conn.connect().await?;
            client
                .admin()
                .remove_schedule(name.clone())
                .await
                .map_err(|e| conn.error(e))?;
            if conn.json {
                print_json(&json!({"removed": name}));
            } else {
                println!("schedule {name} removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn pause(name: &str, paused: bool, conn: &Conn) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let info = client
        .admin()
        .pause_schedule(name, paused)
        .await
        .map_err(|e| conn.error(e))?;
    print_schedules(&[info], conn.json);
    Ok(())
}

fn print_schedules(schedules: &[pb::ScheduleInfo], json: bool) {
    if json {
        print_json(&json!({"schedules": schedules.iter().map(schedule_json).collect::<Vec<_>>()}));
        return;
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|info| {
            let s = info.schedule.clone().unwrap_or_default();
            let when = if s.cron.is_empty() {
                format!("every {}", output::duration(s.every_ms))
            } else if s.timezone.is_empty() {
                s.cron.clone()
            } else {
                format!("{} ({})", s.cron, s.timezone)
            };
            let task = s
                .chain
                .as_ref()
                .and_then(|c| c.steps.first())
                .map(|step| step.name.clone())
                .unwrap_or_default();
            vec![
                s.name.clone(),
                if s.paused { "paused" } else { "active" }.to_owned(),
                when,
                task,
                info.next_fires_unix_ms
                    .first()
                    .map_or(String::new(), |t| output::timestamp(*t)),
                if info.last_fire_unix_ms == 0 {
                    String::new()
                } else {
                    output::timestamp(info.last_fire_unix_ms)
                },
                info.last_chain_id.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "SCHEDULE",
                "STATE",
                "WHEN",
                "TASK",
                "NEXT FIRE",
                "LAST FIRE",
                "LAST CHAIN"
            ],
            &rows
        )
    );
}

fn schedule_json(info: &pb::ScheduleInfo) -> serde_json::Value {
    let s = info.schedule.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "every_ms": s.every_ms,
        "catch_up": s.catch_up,
        "deadline_ms": s.deadline_ms,
        "paused": s.paused,
        "steps": s.chain.map(|c| c.steps.iter().map(|x| x.name.clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "next_fires_unix_ms": info.next_fires_unix_ms,
        "last_fire_unix_ms": info.last_fire_unix_ms,
        "last_chain_id": info.last_chain_id,
        "created_unix_ms": info.created_unix_ms,
    })
}
