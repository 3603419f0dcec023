//! The broker on PostgreSQL (`--store postgres://...`, issue 21), end to
//! end: chains run by a worker, acknowledged ones surviving a clean restart
//! of the library broker and a `kill -9` of the real binary; a database of
//! a newer schema refused at start.
//!
//! Needs `BATON_TEST_POSTGRES` (a connection URL; `.ci/run` starts a server
//! and sets it). Without it the tests say so and pass, except under CI
//! (`CI` set), where they fail. Each test works in a schema of its own.

mod common;
#[path = "common/pg_schema.rs"]
mod pg_schema;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use baton::{Chain, ChainOutcome, Task};
use baton_worker::TaskContext;
use common::*;
use pg_schema::{Schema, sql};
use serde_json::json;

fn two_step(i: u64) -> Chain {
    Chain::new([Task::new("step.one").si([i]), Task::new("step.two").s(())])
}

type Seen = Arc<Mutex<HashSet<(String, String)>>>;

/// Task bodies record every (chain, step) they ran.
fn recording_worker(addr: &str, seen: &Seen) -> TestWorker {
    let body = |seen: Seen| {
        move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .insert((ctx.chain_id.clone(), ctx.name.clone()));
                Ok(ctx.args.first().cloned().unwrap_or(json!(null)))
            }
        }
    };
    TestWorker::spawn(
        worker(addr, "recorder")
            .concurrency(8)
            .task("step.one", body(seen.clone()))
            .task("step.two", body(seen.clone())),
    )
}

fn assert_all_ran(seen: &Seen, ids: &[String]) {
    let seen = seen.lock().unwrap();
    for id in ids {
        for step in ["step.one", "step.two"] {
            assert!(
                seen.contains(&(id.clone(), step.into())),
                "{step} of {id} never ran"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_run_and_survive_a_clean_restart_on_postgres() {
    let Some(schema) = Schema::new("e2e") else {
        return;
    };
    let url = schema.url.clone();
    let broker = TestBroker::start_with(|c| c.postgres = Some(url.clone())).await;
    let client = broker.client().await;
    let seen = Seen::default();
    let worker = recording_worker(&broker.addr, &seen);
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    for (i, id) in ids.iter().enumerate() {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(json!(i)), "chain {i}");
    }
    worker.stop().await;
    // Acknowledged with no worker around: queued when the broker stops.
    let mut waiting = Vec::new();
    for i in 30..60 {
        waiting.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    broker.stop().await;

    let broker = TestBroker::start_with(|c| c.postgres = Some(url.clone())).await;
    let client = broker.client().await;
    for id in &ids {
        let chain = client.get(id).await.unwrap();
        assert_eq!(chain.state(), baton::pb::ChainState::Succeeded, "{id}");
    }
    let worker = recording_worker(&broker.addr, &seen);
    for (i, id) in waiting.iter().enumerate() {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert_eq!(
            outcome,
            ChainOutcome::Succeeded(json!(i + 30)),
            "chain {id}"
        );
    }
    ids.extend(waiting);
    assert_all_ran(&seen, &ids);
    worker.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_chains_survive_kill_9_of_a_broker_on_postgres() {
    let Some(schema) = Schema::new("e2e") else {
        return;
    };
    // --data names a directory the broker must not need.
    let data = tempfile::tempdir().unwrap();
    let unused = data.path().join("unused");
    let port = free_port();
    let args = ["--store", &schema.url, "--lease-ms", "2000"];
    let broker = BrokerProcess::spawn(&unused, port, &args).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    let seen = Seen::default();
    let worker = recording_worker(&broker.addr, &seen);
    for i in 60..120 {
        ids.push(client.submit(two_step(i)).await.unwrap().chain_id);
    }
    broker.kill9().await;

    let broker = BrokerProcess::spawn(&unused, port, &args).await;
    let client = baton::Client::connect(broker.addr.clone()).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let outcome = client.wait_timeout(id, PATIENCE).await.unwrap();
        assert_eq!(outcome, ChainOutcome::Succeeded(json!(i)), "chain {i}");
    }
    assert_all_ran(&seen, &ids);
    worker.stop().await;
    assert!(
        broker.terminate().await,
        "SIGTERM must stop the broker cleanly"
    );
    assert!(!unused.exists(), "the broker made the --data directory");
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_at_start() {
    let Some(schema) = Schema::new("e2e") else {
        return;
    };
    sql(
        &schema.url,
        "CREATE TABLE baton_meta (key text PRIMARY KEY, value text NOT NULL); \
         INSERT INTO baton_meta VALUES ('schema_version', '1000')",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = baton_server::Config::new(data.path());
    config.postgres = Some(schema.url.clone());
    let run = baton_server::run(listener, config, std::future::pending());
    let e = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the broker must refuse to start")
        .expect_err("a newer schema must be refused")
        .to_string();
    assert!(
        e.contains("schema version 1000") && e.contains("newer than this broker knows"),
        "{e}"
    );
}

/// Two brokers on one database (issue 21): the second stands by, refusing
/// calls and naming the first. A client and a worker given only the
/// standby's address follow it to the leader (an address not in their
/// list) and work there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_and_a_worker_given_only_a_standby_follow_it_to_the_leader() {
    let Some(schema) = Schema::new("e2e") else {
        return;
    };
    let url = schema.url.clone();
    let configure = |c: &mut baton_server::Config| {
        c.postgres = Some(url.clone());
        c.leader_lease = std::time::Duration::from_millis(1000);
    };
    let leader = TestBroker::start_with(configure).await;
    // Serving: the leader (no other broker is up to lead).
    leader.client().await.admin().list_queues().await.unwrap();
    let standby = TestBroker::start_with(configure).await;
    let mut raw = baton::pb::broker_client::BrokerClient::connect(standby.addr.clone())
        .await
        .unwrap();
    let refused = raw
        .get_chain(baton::pb::GetChainRequest {
            chain_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let named = refused
        .metadata()
        .get("baton-leader")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(format!("http://{named}"), leader.addr);
    assert_eq!(refused.metadata().get("baton-standby").unwrap(), "1");

    let client = baton::Client::connect(standby.addr.clone()).await.unwrap();
    let id = client.submit(two_step(7)).await.unwrap().chain_id;
    let seen = Seen::default();
    let worker = recording_worker(&standby.addr, &seen);
    let outcome = client.wait_timeout(&id, PATIENCE).await.unwrap();
    assert_eq!(outcome, ChainOutcome::Succeeded(json!(7)));
    assert_all_ran(&seen, &[id]);
    worker.stop().await;
    standby.stop().await;
    leader.stop().await;
}

/// A standby checks the caller's token before it answers (issue 21): a
/// caller without one is refused `UNAUTHENTICATED` and learns nothing of
/// the leader; a caller with one is refused `UNAVAILABLE`, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_names_the_leader_only_to_a_caller_with_a_token() {
    use baton_server::auth::{Auth, Role, Token, Tokens};
    let Some(schema) = Schema::new("e2e") else {
        return;
    };
    const SECRET: &str = "secret-of-ops";
    let url = schema.url.clone();
    let configure = |c: &mut baton_server::Config| {
        c.postgres = Some(url.clone());
        c.leader_lease = std::time::Duration::from_millis(1000);
        c.auth = Auth::Tokens(Arc::new(Tokens::new(vec![Token {
            name: "ops".into(),
            role: Role::Admin,
            queues: None,
            sha256: baton_server::auth::digest(SECRET),
        }])));
    };
    let leader = TestBroker::start_with(configure).await;
    // Serving: the leader (no other broker is up to lead).
    let ops = baton::ClientOptions::new().token(SECRET);
    let client = baton::Client::connect_with(leader.addr.clone(), ops)
        .await
        .unwrap();
    client.admin().list_queues().await.unwrap();
    let standby = TestBroker::start_with(configure).await;
    let ask_at = |addr: String, token: Option<&'static str>| async move {
        let mut admin = baton::pb::admin_client::AdminClient::connect(addr)
            .await
            .unwrap();
        let mut request = tonic::Request::new(baton::pb::ListQueuesRequest {});
        if let Some(secret) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        }
        admin.list_queues(request).await
    };
    let ask = |token| {
        let asked = ask_at(standby.addr.clone(), token);
        async move { asked.await.unwrap_err() }
    };
    // The leader refuses a caller without a token too.
    let at_leader = ask_at(leader.addr.clone(), None).await.unwrap_err();
    assert_eq!(
        at_leader.code(),
        tonic::Code::Unauthenticated,
        "{at_leader:?}"
    );
    let anonymous = ask(None).await;
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert!(anonymous.metadata().get("baton-leader").is_none());
    assert!(
        !anonymous.message().contains("leader is at"),
        "{anonymous:?}"
    );
    let ops = ask(Some(SECRET)).await;
    assert_eq!(ops.code(), tonic::Code::Unavailable, "{ops:?}");
    assert!(ops.metadata().get("baton-leader").is_some(), "{ops:?}");
    standby.stop().await;
    leader.stop().await;
}
