//! `baton chain get|list|watch|cancel`, and the follow loop that `submit
//! --wait` and `dead requeue --wait` share with `watch`.

use std::process::ExitCode;
use std::time::Duration;

use baton::pb;
use tokio_stream::StreamExt;

use super::output::{self, print_json};
use super::{Conn, bounded};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show a chain: its state, context, failure, and every step.
    Get {
        /// The chain's id.
        chain_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the chains of one state, newest first (running ones by
    /// creation, ended ones by when they ended).
    List {
        /// running, succeeded, failed (not requeued) or cancelled.
        #[arg(long, value_parser = ["running", "succeeded", "failed", "cancelled"], default_value = "running")]
        state: String,
        /// Chains per page (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after an earlier page (printed at its end).
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a chain: one line per event until it ends. Exits 0 if it
    /// succeeded, 1 if it failed or was cancelled.
    Watch {
        /// The chain's id.
        chain_id: String,
        /// Give up after this many seconds (the chain goes on).
        #[arg(long, value_parser = super::seconds)]
        timeout: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a chain: unstarted steps never start, running ones are told
    /// to stop, no callback fires. Exits 1 if it had already ended
    /// otherwise.
    Cancel {
        /// The chain's id.
        chain_id: String,
        /// Recorded with the cancellation.
        #[arg(long, default_value = "cancelled with the baton CLI")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Get { chain_id, conn } => {
            let client = conn.connect().await?;
            let chain = client.get(&chain_id).await.map_err(|e| conn.error(e))?;
            if conn.json {
                print_json(&output::chain_json(&chain));
            } else {
                print!("{}", output::chain_text(&chain));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            limit,
            page_token,
            conn,
        } => list(&state, limit, page_token, &conn).await,
        Command::Watch {
            chain_id,
            timeout,
            conn,
        } => {
            let client = conn.connect().await?;
            let chain = follow_for(timeout, &client, &conn, &chain_id, true).await?;
            Ok(ended(&chain))
        }
        Command::Cancel {
            chain_id,
            reason,
            conn,
        } => {
            let client = conn.connect().await?;
            let state = client
                .cancel(&chain_id, reason)
                .await
                .map_err(|e| conn.error(e))?;
            let name = output::chain_state(state as i32);
            if conn.json {
                print_json(&serde_json::json!({"chain_id": chain_id, "state": name}));
            } else if state == pb::ChainState::Cancelled {
                println!("chain {chain_id} cancelled");
            } else {
                println!("chain {chain_id} had already ended: {name}; nothing to cancel");
            }
            Ok(if state == pb::ChainState::Cancelled {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `baton chain list`: one page of a state's chains.
async fn list(
    state: &str,
    limit: u32,
    page_token: String,
    conn: &Conn,
) -> anyhow::Result<ExitCode> {
    if limit == 0 {
        return Err(super::usage("--limit must be at least 1"));
    }
    let wanted = match state {
        "succeeded" => pb::ChainState::Succeeded,
        "failed" => pb::ChainState::Failed,
        "cancelled" => pb::ChainState::Cancelled,
        _ => pb::ChainState::Running,
    };
    let client = conn.connect().await?;
    let page = client
        .admin()
        .list_chains(wanted, limit, page_token)
        .await
        .map_err(|e| conn.error(e))?;
    if conn.json {
        print_json(&serde_json::json!({
            "chains": page.chains.iter().map(output::chain_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = page
        .chains
        .iter()
        .map(|c| {
            let steps: Vec<&str> = c.steps.iter().map(|s| s.name.as_str()).collect();
            let at = if c.finished_unix_ms > 0 {
                c.finished_unix_ms
            } else {
                c.created_unix_ms
            };
            vec![
                output::timestamp(at),
                c.chain_id.clone(),
                output::chain_state(c.state),
                output::short(&steps.join(" | "), 60),
            ]
        })
        .collect();
    let when = if wanted == pb::ChainState::Running {
        "CREATED"
    } else {
        "ENDED"
    };
    print!(
        "{}",
        output::table(&[when, "CHAIN", "STATE", "STEPS"], &rows)
    );
    if page.chains.is_empty() {
        println!("(no {state} chain)");
    }
    if !page.next_page_token.is_empty() {
        println!(
            "more: baton chain list --state {state} --page-token {}",
            page.next_page_token
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code for how a followed chain ended.
pub fn ended(chain: &pb::Chain) -> ExitCode {
    if chain.state == pb::ChainState::Succeeded as i32 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// [`follow`] for at most `timeout`. Giving up, it says which waiting steps
/// no connected worker runs: the usual reason a chain waits that long.
///
/// # Errors
/// Those of [`follow`], or the timeout.
pub async fn follow_for(
    timeout: Option<Duration>,
    client: &baton::Client,
    conn: &Conn,
    chain_id: &str,
    print_events: bool,
) -> anyhow::Result<pb::Chain> {
    let followed = follow(client, conn, chain_id, print_events);
    let error = match bounded(timeout, "the chain", followed).await {
        Ok(chain) => return Ok(chain),
        Err(error) => error,
    };
    let why = match client.get(chain_id).await {
        Ok(chain) => output::unserved_steps(&chain),
        Err(_) => Vec::new(),
    };
    if why.is_empty() {
        Err(error)
    } else {
        Err(anyhow::anyhow!("{error:#}; {}", why.join("; ")))
    }
}

/// Follows a chain until it ends and returns its final state. Events are
/// printed as they come when `print_events` (one line each, or one JSON
/// object per line with `--json`). A watch broken by the connection (a
/// broker restarting) is opened again after a pause; the snapshot it
/// starts with says where the chain is.
///
/// # Errors
/// When the chain cannot be watched (not found, not allowed), or the
/// broker stays unreachable.
pub async fn follow(
    client: &baton::Client,
    conn: &Conn,
    chain_id: &str,
    print_events: bool,
) -> anyhow::Result<pb::Chain> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut last_snapshot: Option<pb::Chain> = None;
    loop {
        let mut events = match client.watch(chain_id).await {
            Ok(events) => events,
            Err(e) if transient(&e) && last_snapshot.is_some() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(e) => return Err(conn.error(e)),
        };
        let mut reopen = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) if transient(&e) => {
                    reopen = true;
                    break;
                }
                Err(e) => return Err(conn.error(e)),
            };
            pause = Duration::from_millis(200);
            if print_events {
                if conn.json {
                    print_json(&output::event_json(&event));
                } else {
                    let elapsed = started.elapsed().as_secs_f64();
                    println!("{elapsed:>8.3}s  {}", output::event_line(&event));
                }
            }
            if let Some(chain) = event.chain {
                if chain.state != pb::ChainState::Running as i32 {
                    return Ok(chain);
                }
                last_snapshot = Some(chain);
            }
        }
        if !reopen && last_snapshot.is_none() {
            anyhow::bail!("the broker ended the watch of chain {chain_id} without an event");
        }
        if print_events && !conn.json {
            eprintln!("(watch interrupted; reconnecting)");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A broken connection or a broker that is going away, as opposed to an
/// answer about the chain.
fn transient(e: &baton::Error) -> bool {
    e.status().is_some_and(|s| {
        s.code() == tonic::Code::Unavailable || std::error::Error::source(s).is_some()
    })
}
