//! The Admin service from the command line: queues, workers, throttles
//! and failed ("dead") chains.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use baton::pb;
use serde_json::json;

use super::output::{self, print_json, table};
use super::{Conn, bounded, usage};

/// Listing commands take only the connection options.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Stop assigning the queue's tasks; they stay READY (and keep
    /// arriving) until resumed. Survives a broker restart.
    Pause {
        /// The queue's name.
        queue: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Assign the queue's tasks again.
    Resume {
        /// The queue's name.
        queue: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel the chain of every task READY in the queue (no callback
    /// fires). Running, delayed and throttled tasks are left alone.
    Purge {
        /// The queue's name.
        queue: String,
        /// Confirm: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        /// Recorded with each cancellation.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum WorkerCommand {
    /// Give the worker no new tasks; it finishes what it runs and stays
    /// connected (a restarted worker starts undrained).
    Drain {
        /// The worker's name (every connection with it), or a worker id.
        name: String,
        /// Wait until the drained workers run nothing, showing progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_parser = super::seconds, requires = "wait")]
        timeout: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ThrottlesArgs {
    #[command(subcommand)]
    pub action: Option<ThrottleAction>,
    /// List every holder under its identity.
    #[arg(long)]
    pub holders: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(clap::Subcommand, Debug)]
pub enum ThrottleAction {
    /// Set the limit of a throttle identity while Baton runs; waiting work
    /// honours it at once. 0 clears the override.
    Set {
        /// The new limit (0: back to the declared concurrency).
        limit: u32,
        #[command(flatten)]
        identity: IdentityArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set the rate of a throttle identity while Baton runs (at most COUNT
    /// starts per PERIOD: 10/s, 100/m, 5/h, 3/10s), overriding the declared
    /// one; stored. --clear goes back to the declared rate.
    Rate {
        /// The rate, COUNT/PERIOD.
        #[arg(required_unless_present = "clear")]
        rate: Option<String>,
        /// Starts allowed at once after a quiet spell (default 1: evenly
        /// spaced).
        #[arg(long, conflicts_with = "clear")]
        burst: Option<u32>,
        /// Clear the override.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        identity: IdentityArgs,
        #[command(flatten)]
        conn: Conn,
    },
}

/// What an admin change left: the identity's entry (`--json`), or one line
/// saying `what` changed and who holds and waits.
fn print_changed(conn: &Conn, info: &pb::ThrottleInfo, what: &str) {
    if conn.json {
        print_json(&output::throttle_json(info));
    } else {
        println!(
            "{}: {what}; {} holder(s), {} waiting",
            output::identity(info.identity.as_ref()),
            info.holders.len(),
            info.waiters
        );
    }
}

/// A throttle identity on the command line.
#[derive(clap::Args, Debug)]
pub struct IdentityArgs {
    /// The task name of the identity (omit for a shared key).
    #[arg(long)]
    task: Option<String>,
    /// The key ("*" or omitted with --task: the whole task name; alone: a
    /// shared key).
    #[arg(long)]
    key: Option<String>,
}

impl IdentityArgs {
    /// The identity `--task` and `--key` name.
    fn identity(self) -> anyhow::Result<pb::ThrottleIdentity> {
        match (self.task, self.key) {
            (None, None) => Err(usage("give --task NAME, --key KEY, or both")),
            (Some(task), key) => Ok(pb::ThrottleIdentity::task(task, key.unwrap_or_default())),
            (None, Some(key)) => Ok(pb::ThrottleIdentity::shared(key)),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum DeadCommand {
    /// Failed chains, newest first, with their failure records.
    List {
        /// Chains per page (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after an earlier page (printed at its end).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Every page.
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Submit a failed chain again as a new chain (same steps, callbacks,
    /// context); prints the new chain's id.
    Requeue {
        /// The failed chain's id.
        chain_id: String,
        /// Wait for the new chain to end, showing its events.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_parser = super::seconds, requires = "wait")]
        timeout: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn count(n: u64) -> String {
    n.to_string()
}

fn print_queue(q: &pb::QueueInfo, json: bool) {
    if json {
        print_json(&output::queue_json(q));
    } else {
        let state = if q.paused { "paused" } else { "active" };
        println!(
            "queue {}: {state}, {} ready, {} running, {} delayed, {} throttled",
            q.name, q.ready, q.running, q.delayed, q.throttled
        );
    }
}

pub async fn queues(args: ListArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let client = conn.connect().await?;
    let queues = client
        .admin()
        .list_queues()
        .await
        .map_err(|e| conn.error(e))?;
    if conn.json {
        print_json(&json!({"queues": queues.iter().map(output::queue_json).collect::<Vec<_>>()}));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                if q.paused { "paused" } else { "active" }.to_owned(),
                count(q.ready),
                count(q.running),
                count(q.delayed),
                count(q.throttled),
                if q.ready > 0 {
                    output::duration(q.oldest_ready_age_ms)
                } else {
                    String::new()
                },
                output::by_priority(q),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "QUEUE",
                "STATE",
                "READY",
                "RUNNING",
                "DELAYED",
                "THROTTLED",
                "OLDEST READY",
                "READY BY PRIORITY"
            ],
            &rows
        )
    );
    if queues.is_empty() {
        println!("(no queue holds work)");
    }
    for line in output::unserved_in_queues(&queues) {
        println!("{line}: its tasks wait until one connects");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queue(command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::Pause { queue, conn } => {
            let client = conn.connect().await?;
            let q = client
                .admin()
                .pause_queue(queue)
                .await
                .map_err(|e| conn.error(e))?;
            print_queue(&q, conn.json);
        }
        QueueCommand::Resume { queue, conn } => {
            let client = conn.connect().await?;
            let q = client
                .admin()
                .resume_queue(queue)
                .await
                .map_err(|e| conn.error(e))?;
            print_queue(&q, conn.json);
        }
        QueueCommand::Purge {
            queue,
            yes,
            reason,
            conn,
        } => {
            if !yes {
                return Err(usage(format!(
                    "purging cancels the chain of every task waiting in queue {queue}, \
                     and cannot be undone: add --yes"
                )));
            }
            let client = conn.connect().await?;
            let purged = client
                .admin()
                .purge_queue(&queue, reason)
                .await
                .map_err(|e| conn.error(e))?;
            if conn.json {
                print_json(&json!({
                    "queue": queue,
                    "cancelled": purged.cancelled,
                    "chain_ids": purged.chain_ids,
                }));
            } else {
                println!(
                    "queue {queue} purged: {} chain(s) cancelled",
                    purged.cancelled
                );
                for id in &purged.chain_ids {
                    println!("  {id}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn worker_rows(workers: &[pb::WorkerInfo]) -> Vec<Vec<String>> {
    workers
        .iter()
        .map(|w| {
            vec![
                w.worker_name.clone(),
                output::short_id(&w.worker_id),
                if w.draining { "draining" } else { "active" }.to_owned(),
                // Held assignments over concurrency, and the prefetch beyond it.
                if w.prefetch > 0 {
                    format!("{}/{}+{}", w.in_flight.len(), w.concurrency, w.prefetch)
                } else {
                    format!("{}/{}", w.in_flight.len(), w.concurrency)
                },
                w.queues.join(","),
                w.task_names.len().to_string(),
                output::ago(w.connected_unix_ms),
            ]
        })
        .collect()
}

const WORKER_HEADERS: [&str; 7] = [
    "NAME",
    "ID",
    "STATE",
    "RUNNING",
    "QUEUES",
    "TASKS",
    "CONNECTED",
];

/// The workers' table (TASKS counts them), then each worker's task names
/// in full, wrapped, under the table.
fn workers_text(workers: &[pb::WorkerInfo]) -> String {
    let mut out = table(&WORKER_HEADERS, &worker_rows(workers));
    let width = workers
        .iter()
        .map(|w| w.worker_name.chars().count())
        .max()
        .unwrap_or(0);
    for (i, w) in workers.iter().enumerate() {
        if i == 0 {
            out.push('\n');
        }
        let label = format!(
            "{:<width$}  ",
            format!("{}:", w.worker_name),
            width = width + 1
        );
        out.push_str(&output::wrap_list(&label, &w.task_names));
    }
    out
}

pub async fn workers(args: ListArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let client = conn.connect().await?;
    let workers = client
        .admin()
        .list_workers()
        .await
        .map_err(|e| conn.error(e))?;
    if conn.json {
        print_json(
            &json!({"workers": workers.iter().map(output::worker_json).collect::<Vec<_>>()}),
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", workers_text(&workers));
    if workers.is_empty() {
        println!("(no worker connected)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(command: WorkerCommand) -> anyhow::Result<ExitCode> {
    let WorkerCommand::Drain {
        name,
        wait,
        timeout,
        conn,
    } = command;
    let client = conn.connect().await?;
    let admin = client.admin();
    let drained = admin.drain_worker(&name).await.map_err(|e| conn.error(e))?;
    if conn.json && !wait {
        print_json(
            &json!({"workers": drained.iter().map(output::worker_json).collect::<Vec<_>>()}),
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !conn.json {
        println!("draining {} connection(s) of worker {name}:", drained.len());
        print!("{}", workers_text(&drained));
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let ids: HashSet<String> = drained.iter().map(|w| w.worker_id.clone()).collect();
    let json = conn.json;
    bounded(timeout, "the drain", async {
        let mut last = None;
        loop {
            let workers = admin.list_workers().await.map_err(|e| conn.error(e))?;
            let running: usize = workers
                .iter()
                .filter(|w| ids.contains(&w.worker_id))
                .map(|w| w.in_flight.len())
                .sum();
            if !json && last != Some(running) {
                println!("{running} task(s) still running");
                last = Some(running);
            }
            if running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    })
    .await?;
    if json {
        print_json(
            &json!({"workers": drained.iter().map(output::worker_json).collect::<Vec<_>>(), "idle": true}),
        );
    } else {
        println!("worker {name} is drained: it runs nothing; stop it when you like");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn throttles(args: ThrottlesArgs) -> anyhow::Result<ExitCode> {
    if let Some(ThrottleAction::Rate {
        rate,
        burst,
        clear,
        identity,
        conn,
    }) = args.action
    {
        let identity = identity.identity()?;
        let rate = match (rate, clear) {
            (_, true) => None,
            (Some(text), false) => {
                let mut rate = baton::parse_rate(&text).map_err(|e| usage(&e))?;
                rate.burst = burst.unwrap_or(0);
                Some(rate)
            }
            (None, false) => return Err(usage("give a RATE (such as 10/s) or --clear")),
        };
        let client = conn.connect().await?;
        let info = client
            .admin()
            .set_throttle_rate(identity, rate)
            .await
            .map_err(|e| conn.error(e))?;
        let how = match info.rate_overridden {
            true => "set",
            false => "back to the declared rate",
        };
        let rate = output::rate(info.rate.as_ref());
        print_changed(&conn, &info, &format!("rate {rate} ({how})"));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ThrottleAction::Set {
        limit,
        identity,
        conn,
    }) = args.action
    {
        let identity = identity.identity()?;
        let client = conn.connect().await?;
        let info = client
            .admin()
            .set_throttle_limit(identity, limit)
            .await
            .map_err(|e| conn.error(e))?;
        let how = match info.limit_overridden {
            true => "set",
            false => "back to the declared concurrency",
        };
        print_changed(&conn, &info, &format!("limit {} ({how})", info.limit));
        return Ok(ExitCode::SUCCESS);
    }
    let conn = &args.conn;
    let client = conn.connect().await?;
    let throttles = client
        .admin()
        .list_throttles()
        .await
        .map_err(|e| conn.error(e))?;
    if conn.json {
        print_json(
            &json!({"throttles": throttles.iter().map(output::throttle_json).collect::<Vec<_>>()}),
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", throttles_text(&throttles, args.holders));
    if throttles.is_empty() {
        println!("(no throttle has holders, waiters or a limit set)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The throttles' table; with `holders`, a second table of who holds
/// each identity (ids shortened: `--json` has them whole).
fn throttles_text(throttles: &[pb::ThrottleInfo], holders: bool) -> String {
    let rows: Vec<Vec<String>> = throttles
        .iter()
        .map(|t| {
            vec![
                output::elide_middle(&output::identity(t.identity.as_ref()), 56),
                format!(
                    "{}{}",
                    if t.limit == 0 && t.rate.is_some() {
                        "-".to_owned()
                    } else {
                        t.limit.to_string()
                    },
                    if t.limit_overridden { " (set)" } else { "" }
                ),
                format!(
                    "{}{}",
                    output::rate(t.rate.as_ref()),
                    if t.rate_overridden { " (set)" } else { "" }
                ),
                t.holders.len().to_string(),
                count(t.waiters),
                if t.waiters > 0 {
                    output::duration(t.oldest_waiter_age_ms)
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "IDENTITY",
            "LIMIT",
            "RATE",
            "HOLDERS",
            "WAITERS",
            "OLDEST WAIT",
        ],
        &rows,
    );
    let held: Vec<Vec<String>> = throttles
        .iter()
        .flat_map(|t| {
            let identity = output::elide_middle(&output::identity(t.identity.as_ref()), 28);
            t.holders.iter().map(move |h| {
                vec![
                    identity.clone(),
                    h.kind.clone(),
                    output::short_id(&h.chain_id),
                    output::short_id(&h.task_id),
                    output::short(&h.worker, 16),
                    output::ago(h.since_unix_ms),
                ]
            })
        })
        .collect();
    if holders && !held.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["HELD", "KIND", "CHAIN", "TASK", "WORKER", "SINCE"],
            &held,
        ));
    }
    let waiting: Vec<Vec<String>> = throttles
        .iter()
        .flat_map(|t| {
            let identity = output::elide_middle(&output::identity(t.identity.as_ref()), 28);
            t.first_waiters.iter().enumerate().map(move |(i, w)| {
                vec![
                    identity.clone(),
                    (i + 1).to_string(),
                    w.kind.clone(),
                    output::short_id(&w.chain_id),
                    output::short_id(&w.task_id),
                    output::ago(w.since_unix_ms),
                ]
            })
        })
        .collect();
    if holders && !waiting.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["WAITING FOR", "#", "KIND", "CHAIN", "TASK", "SINCE"],
            &waiting,
        ));
    }
    out
}

pub async fn dead(command: DeadCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadCommand::List {
            limit,
            page_token,
            all,
            conn,
        } => {
            if limit == 0 {
                return Err(usage("--limit must be at least 1"));
            }
            let client = conn.connect().await?;
            let admin = client.admin();
            let mut chains = Vec::new();
            let mut token = page_token;
            let next = loop {
                let page = admin
                    .list_dead_chains(limit, token)
                    .await
                    .map_err(|e| conn.error(e))?;
                chains.extend(page.chains);
                if !all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                token = page.next_page_token;
            };
            if conn.json {
                print_json(&json!({
                    "chains": chains.iter().map(output::chain_json).collect::<Vec<_>>(),
                    "next_page_token": next,
                }));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = chains
                .iter()
                .map(|c| {
                    let f = c.failure.clone().unwrap_or_default();
                    vec![
                        output::timestamp(c.finished_unix_ms),
                        c.chain_id.clone(),
                        format!(
                            "{}[{}] {}",
                            output::phase(f.phase),
                            f.step_index,
                            f.task_name
                        ),
                        f.attempt.to_string(),
                        f.error_type.clone(),
                        output::short(&f.message, 60),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["FAILED AT", "CHAIN", "STEP", "ATTEMPT", "ERROR", "MESSAGE"],
                    &rows
                )
            );
            if chains.is_empty() {
                println!("(no failed chain)");
            }
            if !next.is_empty() {
                println!("more: baton dead list --page-token {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadCommand::Requeue {
            chain_id,
            wait,
            timeout,
            conn,
        } => {
            let client = conn.connect().await?;
            let new_id = client
                .admin()
                .requeue_chain(&chain_id)
                .await
                .map_err(|e| conn.error(e))?;
            if !wait {
                if conn.json {
                    print_json(&json!({"chain_id": new_id, "requeued_from": chain_id}));
                } else {
                    println!("{new_id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if !conn.json {
                println!("chain {chain_id} requeued as {new_id}");
            }
            let chain =
                super::chain::follow_for(timeout, &client, &conn, &new_id, !conn.json).await?;
            if conn.json {
                print_json(&output::chain_json(&chain));
            }
            Ok(super::chain::ended(&chain))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_row_shows_held_over_concurrency_and_the_prefetch_beyond_it() {
        let held = |n: usize| {
            (0..n)
                .map(|i| pb::TaskRef {
                    task_id: format!("t{i}"),
                    attempt: 1,
                })
                .collect::<Vec<_>>()
        };
        let worker = |prefetch, in_flight| pb::WorkerInfo {
            worker_name: "w".into(),
            concurrency: 4,
            prefetch,
            in_flight,
            ..Default::default()
        };
        let rows = worker_rows(&[worker(0, held(3)), worker(12, held(9))]);
        let running = WORKER_HEADERS.iter().position(|h| *h == "RUNNING").unwrap();
        assert_eq!(rows[0][running], "3/4");
        assert_eq!(rows[1][running], "9/4+12");
    }

    const ID: &str = "01a2418b-51e9-779a-bc40-d189ba64d6c7";

    fn fits(text: &str) {
        for line in text.lines() {
            assert!(
                line.chars().count() <= output::WIDTH,
                "{} columns: {line:?}\n{text}",
                line.chars().count()
            );
        }
    }

    /// Issue 22: the TASKS column was cut at 40 characters.
    #[test]
    fn workers_fit_100_columns_and_list_every_task_name() {
        let names: Vec<String> = [
            "nodeconductor.structure.begin_creating",
            "nodeconductor.openstack.provision_instance",
            "nodeconductor.openstack.poll_instance",
            "nodeconductor.structure.set_ok",
            "nodeconductor.structure.set_erred",
        ]
        .map(str::to_owned)
        .to_vec();
        let w = pb::WorkerInfo {
            worker_name: "host-1:4242".into(),
            worker_id: ID.into(),
            queues: vec!["general".into(), "heavy".into()],
            task_names: names.clone(),
            concurrency: 4,
            ..Default::default()
        };
        let text = workers_text(&[w]);
        fits(&text);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("…d189ba64d6c7") && row.contains("general,heavy"),
            "{text}"
        );
        for name in &names {
            assert!(text.contains(name.as_str()), "{name} missing:\n{text}");
        }
        assert!(
            text.contains("\nhost-1:4242:  nodeconductor.structure.begin_creating,"),
            "{text}"
        );
    }

    /// Issue 22: `--holders` put each holder into the identity column,
    /// which grew to about 120 characters.
    #[test]
    fn throttle_holders_fit_100_columns() {
        let holder = |kind: &str, task: &str| pb::ThrottleHolder {
            kind: kind.into(),
            task_id: task.into(),
            chain_id: ID.into(),
            worker: "a-worker-with-a-rather-long-name:12345".into(),
            since_unix_ms: output::now_ms(),
        };
        let t = pb::ThrottleInfo {
            identity: Some(pb::ThrottleIdentity::task(
                "nodeconductor.openstack.provision_instance",
                "tenant:0f3c5d1e-9a7b-4c2d-8e6f-123456789abc",
            )),
            limit: 4,
            holders: vec![
                holder("in_body", "01a2418b-75b9-729f-95da-8d371698213c"),
                holder("chain", ""),
            ],
            waiters: 2,
            ..Default::default()
        };
        let text = throttles_text(std::slice::from_ref(&t), true);
        fits(&text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().next(), Some("IDENTITY"));
        assert!(
            lines[1].starts_with("nodeconductor.openstack.")
                && lines[1].contains("123456789abc]  4"),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("HELD") && l.contains("CHAIN")),
            "{text}"
        );
        let in_body = lines.iter().find(|l| l.contains(" in_body ")).unwrap();
        assert!(
            in_body.contains("…8d371698213c") && in_body.contains("…d189ba64d6c7"),
            "{text}"
        );
        // Without --holders, the first table alone.
        assert_eq!(throttles_text(&[t], false).lines().count(), 2);
    }
}
