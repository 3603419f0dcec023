//! The HTTP listener of a real broker (the dashboard's JSON API): the same
//! answers and error messages as gRPC, on a listener bound by the test.

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request; the status and the body.
async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A broker with its HTTP listener on a loopback port bound here.
async fn broker_with_http() -> (TestBroker, std::net::SocketAddr) {
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = http.local_addr().expect("addr");
    let broker = TestBroker::start_with(|c| {
        c.http = Some(baton_server::http::Listen::Bound(Arc::new(http)));
    })
    .await;
    (broker, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_as_grpc_does() {
    let (broker, addr) = broker_with_http().await;

    let (status, body) = call(addr, "GET", "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"SERVING"}"#));

    // A chain submitted over HTTP is the chain gRPC reads.
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/chains",
        r#"{"steps": [{"name": "t.one", "args": [1, "a"]}], "idempotency_key": "k"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let submitted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = submitted["chain_id"].as_str().unwrap().to_owned();
    let chain = broker.client().await.get(&id).await.expect("GetChain");
    assert_eq!(chain.chain_id, id);
    let (status, body) = call(addr, "GET", &format!("/api/v1/chains/{id}"), "").await;
    assert_eq!(status, 200, "{body}");
    let chain: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(chain["state"], "CHAIN_STATE_RUNNING");
    assert_eq!(chain["steps"][0]["args"], serde_json::json!([1, "a"]));
    let (_, body) = call(addr, "GET", "/api/v1/chains?q=k", "").await;
    assert!(body.contains(&id), "{body}");
    // Listed among the running chains (no worker runs t.one), not among
    // the succeeded ones.
    let (status, body) = call(addr, "GET", "/api/v1/chains?state=CHAIN_STATE_RUNNING", "").await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["chains"][0]["chain_id"], id.as_str(), "{body}");
    let (status, body) = call(
        addr,
        "GET",
        "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED",
        "",
    )
    .await;
    assert_eq!((status, body.contains(&id)), (200, false), "{body}");
    let (status, body) = call(addr, "GET", "/api/v1/chains?state=DONE", "").await;
    assert_eq!(status, 400, "{body}");

    // A group over HTTP: its step shows its members and their chains, and
    // each member its parent.
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/chains",
        r#"{"steps": [{"members": [{"name": "t.one"}, {"executor": {"steps": [{"name": "t.two"}]}}]}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let submitted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let group_id = submitted["chain_id"].as_str().unwrap().to_owned();
    let (_, body) = call(addr, "GET", &format!("/api/v1/chains/{group_id}"), "").await;
    let chain: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fan = &chain["steps"][0];
    assert_eq!(fan["state"], "STEP_STATE_WAITING", "{body}");
    assert_eq!(
        (fan["name"].as_str(), fan["members"].as_u64()),
        (Some("group"), Some(2))
    );
    let member = fan["child_chain_ids"][1]
        .as_str()
        .expect("two members started");
    let (_, body) = call(addr, "GET", &format!("/api/v1/chains/{member}"), "").await;
    let child: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(child["parent_chain_id"], group_id.as_str());
    assert_eq!(child["member_index"], 1);
    assert_eq!(
        child["steps"][0]["name"], "t.two",
        "the member is the executor"
    );
    let (status, body) = call(
        addr,
        "POST",
        "/api/v1/chains",
        r#"{"steps": [{"members": [{"name": "t.one"}], "args": [1]}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("steps[0].args is set"), "{body}");

    // Errors: the gRPC status's code and message, word for word.
    let grpc = broker
        .client()
        .await
        .get("not-a-uuid")
        .await
        .expect_err("a bad id");
    let (status, body) = call(addr, "GET", "/api/v1/chains/not-a-uuid", "").await;
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert!(
        grpc.to_string()
            .contains(error["message"].as_str().unwrap()),
        "{grpc} vs {body}"
    );
    let (status, body) = call(addr, "POST", "/api/v1/chains", r#"{"stepz": []}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown field `stepz`"), "{body}");

    // Admin calls and /metrics; unknown routes.
    let (status, body) = call(addr, "POST", "/api/v1/queues/general/pause", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""paused":true"#), "{body}");
    let (status, body) = call(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("baton_queue_paused{queue=\"general\"} 1"),
        "{body}"
    );
    let (status, _) = call(addr, "GET", "/nowhere", "").await;
    assert_eq!(status, 404);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_task_name_is_found_at_once_among_many_ended_chains() {
    use baton::Task;
    use baton_worker::TaskContext;
    let (broker, addr) = broker_with_http().await;
    let client = broker.client().await;
    let _w = TestWorker::spawn(
        worker(&broker.addr, "lister")
            .concurrency(64)
            .task("common", |_ctx: TaskContext| async {
                Ok(serde_json::json!(null))
            })
            .task("rare", |_ctx: TaskContext| async {
                Ok(serde_json::json!(null))
            }),
    );
    // Three rare chains, then more common ones than one filtered read of
    // the plain list covers (5,000): newest first, those come first.
    let mut rare = Vec::new();
    for i in 0..3 {
        let id = client
            .submit(Task::new("rare").si([i]))
            .await
            .unwrap()
            .chain_id;
        client.wait_timeout(&id, PATIENCE).await.unwrap();
        rare.push(id);
    }
    for start in (0..6000).step_by(1000) {
        let batch = (start..start + 1000).map(|i| Task::new("common").si([i]));
        let submitted = client.submit_many(batch).await.unwrap();
        for s in &submitted {
            client.wait_timeout(&s.chain_id, PATIENCE).await.unwrap();
        }
    }
    let page = |path: String| async move {
        let (status, body) = call(addr, "GET", &path, "").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let ids = |page: &serde_json::Value| -> Vec<String> {
        let chains = page["chains"].as_array().unwrap();
        chains
            .iter()
            .map(|c| c["chain_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first =
        page("/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&task=rare&page_size=2".into()).await;
    assert_eq!(ids(&first), [rare[2].clone(), rare[1].clone()], "{first}");
    assert_eq!(
        first["scanned"], 2,
        "read from the task index, not the whole list"
    );
    let token = first["next_page_token"].as_str().unwrap();
    let second = page(format!(
        "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&task=rare&page_size=2&page_token={token}"
    ))
    .await;
    assert_eq!(ids(&second), [rare[0].clone()]);
    assert_eq!(second["next_page_token"], "");
    // Created since now: nothing, and the list stops at the first chain
    // that ended before then instead of reading on.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let none = page(format!(
        "/api/v1/chains?state=CHAIN_STATE_SUCCEEDED&since_unix_ms={now}"
    ))
    .await;
    assert!(ids(&none).is_empty());
    assert_eq!(none["next_page_token"], "", "{none}");
    assert!(none["scanned"].as_u64().unwrap() <= 50, "{none}");
    // The running list has no task index: it is filtered as it is read.
    let running = page("/api/v1/chains?state=CHAIN_STATE_RUNNING&task=rare".into()).await;
    assert!(ids(&running).is_empty());
    // A token of this list is refused by another list.
    let (status, body) = call(
        addr,
        "GET",
        "/api/v1/chains?state=CHAIN_STATE_RUNNING&page_token=nonsense",
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_rates_and_schedules_over_http_are_what_grpc_sees() {
    let (broker, addr) = broker_with_http().await;
    let admin = broker.client().await.admin();
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

    // A rate set over HTTP, read over gRPC; cleared with no rate.
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/throttles/rate",
        r#"{"identity": {"key": "api:github"}, "rate": {"count": 10, "period_ms": 1000, "burst": 2}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rate"]["count"], 10, "{body}");
    assert_eq!(json(&body)["rate_overridden"], true);
    let seen = admin.list_throttles().await.unwrap();
    let github = seen
        .iter()
        .find(|t| t.identity.as_ref().is_some_and(|i| i.key == "api:github"))
        .expect("the identity");
    assert_eq!(
        github.rate.map(|r| (r.count, r.period_ms, r.burst)),
        Some((10, 1000, 2))
    );
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/throttles/rate",
        r#"{"identity": {"key": "api:github"}, "rate": {"count": 0, "period_ms": 1000}}"#,
    )
    .await;
    assert_eq!(status, 400, "a rate of 0 is refused: {body}");
    assert!(body.contains("count"), "{body}");
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/throttles/rate",
        r#"{"identity": {"key": "api:github"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rate_overridden"], false, "{body}");

    // A schedule put over HTTP is the one gRPC lists; paused, resumed,
    // removed.
    let schedule = r#"{"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
        "chain": {"steps": [{"name": "report.build", "args": ["daily", 7], "options": {"queue": "reports"}}],
                  "unique_key": "report"}}"#;
    let (status, body) = call(addr, "PUT", "/api/v1/schedules", schedule).await;
    assert_eq!(status, 200, "{body}");
    let put = json(&body);
    assert_eq!(
        put["chain"]["steps"][0]["args"],
        serde_json::json!(["daily", 7])
    );
    assert_eq!(put["chain"]["steps"][0]["options"]["queue"], "reports");
    assert_eq!(
        put["next_fires_unix_ms"].as_array().unwrap().len(),
        5,
        "{body}"
    );
    let listed = admin.list_schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    let kept = listed[0].schedule.as_ref().unwrap();
    assert_eq!(
        (kept.name.as_str(), kept.cron.as_str()),
        ("nightly-report", "0 3 * * *")
    );
    let (status, body) = call(addr, "GET", "/api/v1/schedules", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["schedules"][0]["timezone"], "Europe/Berlin");
    let (status, body) = call(addr, "POST", "/api/v1/schedules/nightly-report/pause", "").await;
    assert_eq!(
        (status, json(&body)["paused"].clone()),
        (200, serde_json::json!(true)),
        "{body}"
    );
    assert!(
        json(&body)["next_fires_unix_ms"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (status, body) = call(addr, "POST", "/api/v1/schedules/nightly-report/resume", "").await;
    assert_eq!(
        (status, json(&body)["paused"].clone()),
        (200, serde_json::json!(false)),
        "{body}"
    );
    // Bad input changes nothing and says what was wrong.
    let (status, body) = call(
        addr,
        "PUT",
        "/api/v1/schedules",
        r#"{"name": "nightly-report", "cron": "not a cron", "chain": {"steps": [{"name": "x"}]}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cron"), "{body}");
    assert_eq!(
        admin.list_schedules().await.unwrap()[0]
            .schedule
            .as_ref()
            .unwrap()
            .cron,
        "0 3 * * *"
    );
    let (status, body) = call(addr, "DELETE", "/api/v1/schedules/nightly-report", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(admin.list_schedules().await.unwrap().is_empty());
    let (status, body) = call(addr, "DELETE", "/api/v1/schedules/nightly-report", "").await;
    assert_eq!(status, 404, "{body}");
}
