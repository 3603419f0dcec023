//! The dashboard's chain list with many chains stored (issue 25): how long
//! a page takes to come back when the store holds `chains` ended chains.
//!
//! One broker with its HTTP listener and no-op Rust workers runs `chains`
//! one-step chains to their end, each with an idempotency key, submitted
//! in batches of 1,000; one chain in every 100,000 (at least one) runs a
//! rare task name instead. Then, each `runs` times (the median and the
//! range are printed):
//! - the first page of 50 succeeded chains, over gRPC (`Admin.ListChains`)
//!   and over HTTP (`GET /api/v1/chains`), and the 100th page followed by
//!   its token;
//! - the rare task name as a filter: the requests (each reading at most
//!   5,000 records) and the time to page through every chain stored;
//! - a search by chain id and by idempotency key (`q=`);
//! - the running list, empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baton::{Chain, Task, pb};
use serde_json::Value;

use crate::broker::{Broker, Settings};
use crate::workers::{BEGIN, NOOP, Tally, Workers};

pub async fn run(settings: &Settings, chains: usize, runs: usize) -> Result<()> {
    let data = tempfile::tempdir()?;
    let http_port = crate::broker::free_port()?;
    let mut settings = settings.clone();
    settings
        .extra
        .extend(["--http".to_owned(), format!("127.0.0.1:{http_port}")]);
    let broker = Broker::start(&settings, data.path()).await?;
    let client = broker.client().await?;
    let tally = Arc::new(Tally::default());
    let workers = Workers::start(&broker.addr, 2, 64, &tally);

    // Fill the store.
    let rare_every = 100_000.min(chains.max(1));
    let rare = chains.div_ceil(rare_every);
    let began = Instant::now();
    let mut first = None;
    for start in (0..chains).step_by(1000) {
        let batch = (start..(start + 1000).min(chains)).map(|i| {
            let name = if i % rare_every == rare_every / 2 {
                BEGIN
            } else {
                NOOP
            };
            Chain::from(Task::new(name).si([i])).idempotency_key(format!("order-{i}"))
        });
        let submitted = client.submit_many(batch).await?;
        first.get_or_insert_with(|| submitted[0].chain_id.clone());
        // Keep the backlog bounded: the broker keeps queued chains' heads
        // in memory.
        if start % 50_000 == 0 {
            tally.wait_for(start.saturating_sub(50_000 + rare)).await;
        }
    }
    tally.wait_for(chains - rare).await;
    // The rare ones are not counted by the tally: wait for the broker.
    let mut waited = 0;
    while count_running(&client).await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
        anyhow::ensure!(waited < 600, "chains still running after a minute");
    }
    let filled = began.elapsed();
    println!(
        "listing: {chains} ended chains stored ({rare} of task {BEGIN}) in {:.1} s, data dir {} MB",
        filled.as_secs_f64(),
        crate::broker::disk_bytes(data.path())? / 1_000_000
    );
    let first = first.context("no chain")?;

    let mut figures: Vec<(&str, Vec<Duration>, String)> = Vec::new();
    let mut time = |name, took: Duration, note: String| match figures
        .iter_mut()
        .find(|(n, _, _)| *n == name)
    {
        Some((_, times, last)) => {
            times.push(took);
            *last = note;
        }
        None => figures.push((name, vec![took], note)),
    };
    for _ in 0..runs {
        let t = Instant::now();
        let page = client
            .admin()
            .list_chains(pb::ChainState::Succeeded, 50, "")
            .await?;
        time(
            "grpc: first page of 50",
            t.elapsed(),
            format!("{} chains", page.chains.len()),
        );

        let t = Instant::now();
        let page = get(
            http_port,
            "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&page_size=50",
        )
        .await?;
        time(
            "http: first page of 50",
            t.elapsed(),
            format!("{} chains", page["chains"].as_array().map_or(0, Vec::len)),
        );

        let mut token = String::new();
        for _ in 0..99 {
            let page = get(
                http_port,
                &format!(
                    "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&page_size=50&page_token={token}"
                ),
            )
            .await?;
            token = page["next_page_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        let t = Instant::now();
        let page = get(
            http_port,
            &format!("/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&page_size=50&page_token={token}"),
        )
        .await?;
        time(
            "http: 100th page of 50",
            t.elapsed(),
            format!("{} chains", page["chains"].as_array().map_or(0, Vec::len)),
        );

        let t = Instant::now();
        let page = get(
            http_port,
            &format!("/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&task={BEGIN}"),
        )
        .await?;
        time(
            "http: filter, first request",
            t.elapsed(),
            format!(
                "{} found, {} read",
                page["chains"].as_array().map_or(0, Vec::len),
                page["scanned"]
            ),
        );

        let t = Instant::now();
        let (mut found, mut requests, mut token) = (0, 0, String::new());
        loop {
            let page = get(
                http_port,
                &format!(
                    "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&task={BEGIN}&page_token={token}"
                ),
            )
            .await?;
            requests += 1;
            found += page["chains"].as_array().map_or(0, Vec::len);
            token = page["next_page_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if token.is_empty() {
                break;
            }
        }
        time(
            "http: filter, every page",
            t.elapsed(),
            format!("{found} found in {requests} requests"),
        );

        let t = Instant::now();
        let page = get(http_port, &format!("/api/v1/chains?q={first}")).await?;
        time(
            "http: search by id",
            t.elapsed(),
            format!("{} found", page["chains"].as_array().map_or(0, Vec::len)),
        );

        let key = format!("order-{}", chains / 2);
        let t = Instant::now();
        let page = get(http_port, &format!("/api/v1/chains?q={key}")).await?;
        time(
            "http: search by key",
            t.elapsed(),
            format!("{} found", page["chains"].as_array().map_or(0, Vec::len)),
        );

        let t = Instant::now();
        let page = get(http_port, "/api/v1/chains?state=CHAIN_STATE_RUNNING").await?;
        time(
            "http: running (none)",
            t.elapsed(),
            format!("{} chains", page["chains"].as_array().map_or(0, Vec::len)),
        );
    }
    println!(
        "{:<30} {:>10} {:>22}  last answer",
        "request", "median", "range"
    );
    for (name, mut times, note) in figures {
        times.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<30} {:>7.2} ms {:>8.2} .. {:>7.2} ms  {note}",
            name,
            ms(&times[times.len() / 2]),
            ms(&times[0]),
            ms(times.last().expect("a run"))
        );
    }
    workers.stop().await;
    drop(client);
    broker.stop().await
}

/// Chains still running, as the running list's first page counts them.
async fn count_running(client: &baton::Client) -> Result<usize> {
    let page = client
        .admin()
        .list_chains(pb::ChainState::Running, 10, "")
        .await?;
    Ok(page.chains.len())
}

/// `GET path` on the broker's HTTP listener, as JSON.
async fn get(port: u16, path: &str) -> Result<Value> {
    let text = crate::broker::http_get(port, path).await?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("no HTTP body")?;
    serde_json::from_str(body).with_context(|| format!("{path}: {body}"))
}
