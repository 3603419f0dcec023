//! Authentication and transport end to end: tokens with roles, chains that
//! belong to the client that submitted them, workers held to their queues,
//! TLS with certificates made at run time, and mutual TLS for workers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton::{Chain, ChainOutcome, Client, ClientOptions, Task, TlsOptions, pb};
use baton_server::auth::{self, Auth, Role, Token, Tokens};
use baton_worker::{TaskContext, TaskError};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tonic::Code;

const CLIENT_A: &str = "secret-of-client-a";
const CLIENT_B: &str = "secret-of-client-b";
const ADMIN: &str = "secret-of-admin";
const WORKER: &str = "secret-of-general-worker";

fn token(name: &str, role: Role, queues: Option<&[&str]>, secret: &str) -> Token {
    Token {
        name: name.into(),
        role,
        queues: queues.map(|q| q.iter().map(|s| s.to_string()).collect()),
        sha256: auth::digest(secret),
    }
}

fn tokens() -> Auth {
    Auth::Tokens(Arc::new(Tokens::new(vec![
        token("client-a", Role::Client, None, CLIENT_A),
        token("client-b", Role::Client, None, CLIENT_B),
        token("ops", Role::Admin, None, ADMIN),
        token("general-worker", Role::Worker, Some(&["general"]), WORKER),
    ])))
}

async fn client_with(addr: &str, secret: &str) -> Client {
    Client::connect_with(addr, ClientOptions::new().token(secret))
        .await
        .expect("connect")
}

fn code<T: std::fmt::Debug>(result: baton::Result<T>) -> Code {
    result
        .expect_err("the call must fail")
        .code()
        .expect("a status")
}

async fn echo(ctx: TaskContext) -> Result<Value, TaskError> {
    Ok(ctx.args.first().cloned().unwrap_or(Value::Null))
}

/// Waits for chain `id`'s outcome; on a timeout, fails with what the
/// broker knows (the chain, and the workers as `admin` sees them).
async fn outcome(client: &Client, admin: &Client, id: &str) -> ChainOutcome {
    match client.wait_timeout(id, PATIENCE).await {
        Ok(outcome) => outcome,
        Err(error) => panic!(
            "chain {id}: {error}\nchain: {:#?}\nworkers: {:#?}",
            admin.get(id).await,
            admin.admin().list_workers().await
        ),
    }
}

/// Runs a worker that the broker must refuse; returns the status.
async fn refused(builder: baton_worker::WorkerBuilder) -> tonic::Status {
    let run = builder
        .build()
        .expect("build")
        .run_until(std::future::pending());
    match tokio::time::timeout(PATIENCE, run).await {
        Ok(Err(baton_worker::Error::Rejected(status))) => *status,
        other => panic!("the worker should have been refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_known_token_are_unauthenticated() {
    let broker = TestBroker::start_with(|c| c.auth = tokens()).await;
    let anonymous = broker.client().await;
    let chain = || Task::new("t.echo").si([1]);
    assert_eq!(code(anonymous.submit(chain()).await), Code::Unauthenticated);
    assert_eq!(
        code(anonymous.admin().list_queues().await),
        Code::Unauthenticated
    );
    let wrong = client_with(&broker.addr, "not-a-token").await;
    assert_eq!(code(wrong.submit(chain()).await), Code::Unauthenticated);
    // A worker with no token is refused for good, not retried.
    let status = refused(worker(&broker.addr, "w").task("t.echo", echo)).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    // Health stays open: probes carry no token.
    let channel = tonic::transport::Endpoint::from_shared(broker.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1); // SERVING
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_only_their_own_chains_and_admins_see_all() {
    let broker = TestBroker::start_with(|c| c.auth = tokens()).await;
    let a = client_with(&broker.addr, CLIENT_A).await;
    let b = client_with(&broker.addr, CLIENT_B).await;
    let ops = client_with(&broker.addr, ADMIN).await;

    // No worker runs t.echo, so the chains stay running.
    let submitted = a
        .submit(Chain::from(Task::new("t.echo").si([1])).idempotency_key("order-1"))
        .await
        .unwrap();
    let id = submitted.chain_id.clone();
    assert_eq!(a.get(&id).await.unwrap().chain_id, id);
    let mut events = a.watch(&id).await.unwrap();
    assert!(futures::StreamExt::next(&mut events).await.is_some());

    // Another client: as if the chain did not exist.
    let not_found = b.get(&id).await.unwrap_err();
    assert_eq!(not_found.code(), Some(Code::NotFound));
    assert_eq!(
        not_found.status().unwrap().message(),
        format!("chain {id} not found")
    );
    assert_eq!(code(b.watch(&id).await.map(|_| ())), Code::NotFound);
    assert_eq!(code(b.cancel(&id, "not mine").await), Code::NotFound);
    // Its idempotency keys are its own: the same key makes a new chain.
    let other = b
        .submit(Chain::from(Task::new("t.echo").si([2])).idempotency_key("order-1"))
        .await
        .unwrap();
    assert!(other.is_new());
    assert_ne!(other.chain_id, id);
    // The owner's repeat is still deduplicated.
    let again = a
        .submit(Chain::from(Task::new("t.echo").si([1])).idempotency_key("order-1"))
        .await
        .unwrap();
    assert_eq!(
        (again.chain_id.as_str(), again.is_new()),
        (id.as_str(), false)
    );

    // Clients may not inspect or set limits.
    assert_eq!(code(a.admin().list_queues().await), Code::PermissionDenied);
    assert_eq!(code(a.admin().list_workers().await), Code::PermissionDenied);
    assert_eq!(
        code(
            a.admin()
                .set_throttle_limit(pb::ThrottleIdentity::shared("k"), 2)
                .await
        ),
        Code::PermissionDenied
    );
    // The admin may: inspect, set limits, read and cancel anyone's chain.
    let queues = ops.admin().list_queues().await.unwrap();
    assert!(queues.iter().any(|q| q.name == "general" && q.ready == 2));
    let limit = ops
        .admin()
        .set_throttle_limit(pb::ThrottleIdentity::shared("k"), 2)
        .await
        .unwrap();
    assert_eq!(limit.limit, 2);
    assert_eq!(
        ops.get(&other.chain_id).await.unwrap().chain_id,
        other.chain_id
    );
    assert_eq!(
        ops.cancel(&id, "by the admin").await.unwrap(),
        pb::ChainState::Cancelled
    );
    // The owner may cancel its own.
    assert_eq!(
        b.cancel(&other.chain_id, "mine").await.unwrap(),
        pb::ChainState::Cancelled
    );
    // A worker token is no client.
    let w = client_with(&broker.addr, WORKER).await;
    assert_eq!(
        code(w.submit(Task::new("t.echo").si([3])).await),
        Code::PermissionDenied
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_token_serves_only_its_queues() {
    let broker = TestBroker::start_with(|c| c.auth = tokens()).await;
    let heavy = refused(
        worker(&broker.addr, "w-heavy")
            .token(WORKER)
            .queues(["general", "heavy"])
            .task("t.echo", echo),
    )
    .await;
    assert_eq!(heavy.code(), Code::PermissionDenied);
    assert!(heavy.message().contains("\"heavy\""), "{}", heavy.message());
    // Neither a client nor an admin token opens a worker stream.
    for secret in [CLIENT_A, ADMIN] {
        let status = refused(worker(&broker.addr, "w").token(secret).task("t.echo", echo)).await;
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    // With its own queue, it works.
    let _w = TestWorker::spawn(
        worker(&broker.addr, "w-general")
            .token(WORKER)
            .task("t.echo", echo),
    );
    let a = client_with(&broker.addr, CLIENT_A).await;
    let id = a
        .submit(Task::new("t.echo").si([7]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        outcome(&a, &client_with(&broker.addr, ADMIN).await, &id).await,
        ChainOutcome::Succeeded(json!(7))
    );
    broker.stop().await;
}

/// A private CA and certificates it signs, made at run time.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf certificate and its key, both PEM.
    fn leaf(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_tls(&self, client_ca: Option<String>) -> auth::Tls {
        let (cert, key) = self.leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        auth::Tls {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
            client_ca_pem: client_ca.map(String::into_bytes),
        }
    }

    /// Trust this CA; the broker is reached by IP, its certificate names
    /// "localhost".
    fn trust(&self) -> TlsOptions {
        TlsOptions::new().ca_pem(self.ca_pem()).domain("localhost")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_and_workers_that_trust_the_ca() {
    let pki = Pki::new("baton test CA");
    let tls = pki.server_tls(None);
    let broker = TestBroker::start_with(|c| c.tls = Some(tls)).await;
    // TestBroker's address says http://; TLS options make it https.
    let _w = TestWorker::spawn(
        worker(&broker.addr, "w-tls")
            .tls(pki.trust())
            .task("t.echo", echo),
    );
    let client = Client::connect_with(&broker.addr, ClientOptions::new().tls(pki.trust()))
        .await
        .expect("a client trusting the CA connects");
    let id = client
        .submit(Task::new("t.echo").si(["over tls"]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        outcome(&client, &client, &id).await,
        ChainOutcome::Succeeded(json!("over tls"))
    );

    // Not trusting the CA: the handshake fails, naming why.
    let stranger = Pki::new("another CA");
    let error = Client::connect_with(&broker.addr, ClientOptions::new().tls(stranger.trust()))
        .await
        .expect_err("a client trusting another CA must not connect");
    assert!(matches!(error, baton::Error::Transport(_)), "{error:?}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    // The right CA but the wrong name.
    let error = Client::connect_with(
        &broker.addr,
        ClientOptions::new().tls(TlsOptions::new().ca_pem(pki.ca_pem()).domain("elsewhere")),
    )
    .await
    .expect_err("a name the certificate does not carry must fail");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    // Plaintext gets no answer from a TLS listener: an error, or nothing at
    // all (on a busy machine the failed handshake may not come back within
    // the wait; what matters is that the chain is never served).
    let plain = Client::connect(broker.addr.clone()).await;
    let failed = match plain {
        Err(_) => true,
        Ok(c) => tokio::time::timeout(Duration::from_secs(10), c.get(&id))
            .await
            .map_or(true, |r| r.is_err()),
    };
    assert!(failed, "a plaintext client must not be served");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_of_workers() {
    let pki = Pki::new("baton test CA");
    let tls = pki.server_tls(Some(pki.ca_pem()));
    let broker = TestBroker::start_with(|c| {
        c.tls = Some(tls);
        c.auth = tokens();
    })
    .await;
    // A worker with a good token but no certificate is refused.
    let status = refused(
        worker(&broker.addr, "w-nocert")
            .token(WORKER)
            .tls(pki.trust())
            .task("t.echo", echo),
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("client certificate"),
        "{}",
        status.message()
    );
    // With one signed by the client CA, it runs the chain.
    let (cert, key) = pki.leaf("worker-1", ExtendedKeyUsagePurpose::ClientAuth);
    let _w = TestWorker::spawn(
        worker(&broker.addr, "w-cert")
            .token(WORKER)
            .tls(pki.trust().client_identity(cert, key))
            .task("t.echo", echo),
    );
    // Clients still need no certificate: their token is enough.
    let client = Client::connect_with(
        &broker.addr,
        ClientOptions::new().token(CLIENT_A).tls(pki.trust()),
    )
    .await
    .unwrap();
    let id = client
        .submit(Task::new("t.echo").si(["mutual"]))
        .await
        .unwrap()
        .chain_id;
    assert_eq!(
        outcome(
            &client,
            &Client::connect_with(
                &broker.addr,
                ClientOptions::new().token(ADMIN).tls(pki.trust())
            )
            .await
            .unwrap(),
            &id
        )
        .await,
        ChainOutcome::Succeeded(json!("mutual"))
    );
    broker.stop().await;
}

/// `baton` with `args`, `stdin` fed in; no BATON_* settings of this
/// environment leak in.
fn baton_cli(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut command = std::process::Command::new(baton_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("BATON_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run baton");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("baton output")
}

/// Runs `baton serve` that must refuse to start; returns its stderr.
fn refuses_to_serve(extra: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["serve", "--data", data.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = baton_cli(&args, "");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "baton {args:?} started: {stderr}");
    stderr
}

#[test]
fn the_cli_makes_tokens_and_refuses_unsafe_or_broken_settings() {
    let new = baton_cli(&["token", "new", "--name", "ops", "--role", "admin"], "");
    assert!(new.status.success(), "{new:?}");
    let toml = String::from_utf8(new.stdout).unwrap();
    let stderr = String::from_utf8(new.stderr).unwrap();
    let secret = stderr
        .lines()
        .find(|l| l.starts_with("baton_"))
        .expect("the secret on stderr")
        .to_owned();
    assert!(
        !toml.contains(&secret),
        "the secret must not reach the file"
    );
    let tokens = Tokens::parse(&toml, "stdout").unwrap();
    assert_eq!(tokens.verify(&secret).map(|t| t.role), Some(Role::Admin));
    let hash = baton_cli(&["token", "hash"], &format!("{secret}\n"));
    let hash = String::from_utf8(hash.stdout).unwrap();
    assert!(
        toml.contains(&format!("sha256 = \"{}\"", hash.trim())),
        "{toml}"
    );
    let worker = baton_cli(&["token", "new", "--name", "w", "--role", "worker"], "");
    assert!(!worker.status.success());
    assert!(String::from_utf8_lossy(&worker.stderr).contains("needs --queues"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let file = file.to_str().unwrap();
    let e = refuses_to_serve(&["--auth", "tokens"]);
    assert!(e.contains("--auth tokens needs a token file"), "{e}");
    let e = refuses_to_serve(&["--listen", "0.0.0.0:7070"]);
    assert!(
        e.contains("refusing to serve without authentication on 0.0.0.0:7070"),
        "{e}"
    );
    std::fs::write(file, "").unwrap();
    let e = refuses_to_serve(&["--tokens", file]);
    assert!(e.contains("has no [[token]] entries"), "{e}");
    std::fs::write(file, "[[token]]\nname = \"x\"\nrole = \"root\"\n").unwrap();
    let e = refuses_to_serve(&["--tokens", file]);
    assert!(e.contains("missing field `sha256`"), "{e}");
    std::fs::write(file, &toml).unwrap();
    let e = refuses_to_serve(&["--auth", "off", "--tokens", file]);
    assert!(e.contains("contradict"), "{e}");
    let e = refuses_to_serve(&["--tls-cert", file]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = refuses_to_serve(&["--tokens", file, "--tls-cert", file, "--tls-key", file]);
    assert!(e.contains("TLS configuration"), "{e}");
}

/// A `baton serve` child (killed on drop) with its data directory.
struct Served {
    _child: tokio::process::Child,
    _data: tempfile::TempDir,
    addr: String,
    /// Its stderr up to the "listening" line.
    log: Vec<String>,
}

/// `baton serve` on a free loopback port.
async fn serve(extra: &[&str]) -> Served {
    use tokio::io::AsyncBufReadExt;
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(baton_binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("BATON_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn baton");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("baton broker listening");
            seen.push(line);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("baton listening");
    // Keep draining stderr so the broker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served {
        _child: child,
        _data: data,
        addr: format!("http://127.0.0.1:{port}"),
        log: seen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_says_when_auth_is_off_and_serves_a_token_file() {
    let served = serve(&[]).await;
    let log = &served.log;
    assert!(
        log.iter()
            .any(|l| l.contains("WARN")
                && l.contains("authentication is OFF (local development only)")),
        "{log:#?}"
    );
    drop(served);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let mut toml = auth::toml_entry("ops", Role::Admin, &[], ADMIN);
    toml += &auth::toml_entry("ci", Role::Client, &[], CLIENT_A);
    std::fs::write(&file, toml).unwrap();
    let served = serve(&["--tokens", file.to_str().unwrap()]).await;
    let (addr, log) = (&served.addr, &served.log);
    assert!(
        log.iter()
            .any(|l| l.contains("token authentication on") && l.contains("tokens=2")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("authentication is OFF")),
        "{log:#?}"
    );
    let ops = client_with(addr, ADMIN).await;
    assert!(ops.admin().list_queues().await.is_ok());
    let anonymous = Client::connect(addr.clone()).await.unwrap();
    assert_eq!(
        code(anonymous.admin().list_queues().await),
        Code::Unauthenticated
    );
    let ci = client_with(addr, CLIENT_A).await;
    assert_eq!(code(ci.admin().list_queues().await), Code::PermissionDenied);
}
