//! Property tests (proptest) of what untrusted bytes reach: request
//! validation, stored-record decoding and recovery, and the throttle
//! bookkeeping that guarantee 4 rests on. Case counts stay modest so
//! `cargo test` stays fast; `PROPTEST_CASES=10000 cargo test --test props`
//! digs deeper.

use std::collections::HashMap;

use baton::pb;
use baton_server::api::convert::{self, Limits};
use baton_server::domain::{ChainRecord, Identity, TaskId};
use baton_server::scheduler::throttle::{Holder, Throttles, Waiter};
use baton_server::store::{Shared, inconsistency};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// 1. Request validation
// ---------------------------------------------------------------------------

/// Text of every kind: plausible names, unicode with control characters,
/// lengths around the limits, JSON-looking fragments.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[a-z][a-z0-9_.:-]{0,20}",
        1 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => (190usize..=210).prop_map(|n| "x".repeat(n)),
        1 => (60usize..=70).prop_map(|n| "q".repeat(n)),
        1 => Just("é".repeat(200)),
        1 => Just("a\u{0}b".into()),
        1 => Just("tab\there".into()),
    ]
}

/// Mostly well-formed `(args, kwargs)` pairs, sometimes anything.
fn arguments() -> impl Strategy<Value = (String, String)> {
    let args = prop_oneof![
        3 => Just(String::new()),
        3 => prop::collection::vec(any::<i32>(), 0..3)
            .prop_map(|v| serde_json::to_string(&v).unwrap()),
        2 => json_ish(),
    ];
    let kwargs = prop_oneof![
        3 => Just(String::new()),
        3 => prop::collection::btree_map("[a-z]{1,3}", any::<bool>(), 0..3)
            .prop_map(|m| serde_json::to_string(&m).unwrap()),
        2 => json_ish(),
    ];
    (args, kwargs)
}

fn json_ish() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        3 => Just(String::new()),
        3 => value.prop_map(|v| v.to_string()),
        1 => text(),
        1 => Just("[".into()),
        1 => Just("{\"a\":}".into()),
        1 => Just("[1,2,]".into()),
        1 => Just("  [ ]  ".into()),
    ]
}

/// Durations and times: small, near the limit, and absurd.
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0u64..10_000,
        1 => Just(convert::MAX_MS),
        1 => Just(convert::MAX_MS + 1),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn throttle() -> impl Strategy<Value = pb::Throttle> {
    let concurrency = prop_oneof![6 => 0u32..10, 1 => any::<u32>()];
    let scope = prop_oneof![6 => 0i32..3, 1 => any::<i32>()];
    let key = prop_oneof![3 => "[a-z:]{0,10}", 1 => text()];
    let rate = prop::option::of((any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
        |(count, period_ms, burst)| pb::Rate {
            count,
            period_ms,
            burst,
        },
    ));
    (concurrency, key, any::<bool>(), scope, rate).prop_map(
        |(concurrency, key, shared, scope, rate)| pb::Throttle {
            concurrency,
            key,
            shared,
            scope,
            rate,
        },
    )
}

fn options() -> impl Strategy<Value = pb::Options> {
    (
        (
            prop_oneof![4 => Just(String::new()), 2 => "[a-z.:-]{1,10}", 1 => text()],
            any::<bool>(),
            prop::option::weighted(0.3, throttle()),
        ),
        (
            prop::option::of(any::<u32>()),
            prop::option::of(millis()),
            prop::option::of(millis()),
            prop::option::of(any::<u32>()),
        ),
        (prop::option::of(millis()), millis(), millis()),
        (any::<i32>(), prop_oneof![4 => "[ a-z]{0,20}", 1 => text()]),
    )
        .prop_map(
            |(
                (queue, heavy, throttle),
                (max_retries, retry_backoff_ms, retry_backoff_max_ms, max_polls),
                (timeout_ms, countdown_ms, eta_unix_ms),
                (priority, description),
            )| pb::Options {
                queue,
                heavy,
                throttle,
                max_retries,
                retry_backoff_ms,
                retry_backoff_max_ms,
                max_polls,
                timeout_ms,
                countdown_ms,
                eta_unix_ms,
                priority,
                description,
            },
        )
}

/// A task's signature.
fn leaf() -> BoxedStrategy<pb::Signature> {
    (
        prop_oneof![6 => "[a-z][a-z0-9_.]{0,20}", 2 => text()],
        arguments(),
        any::<bool>(),
        prop::option::weighted(0.5, options()),
    )
        .prop_map(|(name, (args, kwargs), immutable, options)| pb::Signature {
            name,
            args,
            kwargs,
            immutable,
            options,
            members: Vec::new(),
            executor: None,
        })
        .boxed()
}

/// A signature: mostly a task's, sometimes a group or an executor of
/// tasks, or a group whose first member is an executor. Built from a flat
/// list of tasks and a shape: strategies nested through `prop_recursive`
/// or unions of unions overflow the test thread's stack in a debug build.
fn signature() -> BoxedStrategy<pb::Signature> {
    // Tasks inside groups and executors are mostly sound, so that what is
    // checked is the composite itself, not its members' names.
    let sound = "[a-z][a-z0-9_.]{0,20}".prop_map(|name| pb::Signature {
        name,
        ..Default::default()
    });
    let members = prop_oneof![
        4 => prop::collection::vec(sound, 1..5),
        1 => prop::collection::vec(leaf(), 1..5),
    ];
    let label = prop_oneof![2 => Just(String::new()), 2 => "[a-z][a-z0-9_.]{0,20}", 1 => text()];
    let no_arguments = prop_oneof![
        4 => Just((String::new(), String::new())),
        1 => arguments(),
    ];
    (leaf(), members, 0u8..12, label, no_arguments)
        .prop_map(|(task, mut tasks, shape, name, (args, kwargs))| {
            let group = |members: Vec<pb::Signature>| pb::Signature {
                name: name.clone(),
                args: args.clone(),
                kwargs: kwargs.clone(),
                members,
                ..Default::default()
            };
            let executor = |mut steps: Vec<pb::Signature>| {
                let on_success = steps.split_off(steps.len() / 2);
                pb::Signature {
                    executor: Some(pb::Executor {
                        steps,
                        on_success,
                        on_failure: Vec::new(),
                    }),
                    ..Default::default()
                }
            };
            match shape {
                6..=8 => group(tasks),
                9..=10 => executor(tasks),
                11 => {
                    let rest = tasks.split_off(tasks.len() / 2);
                    let mut members = vec![executor(tasks)];
                    members.extend(rest);
                    group(members)
                }
                _ => task,
            }
        })
        .boxed()
}

/// What the scheduler assumes of an accepted signature, down its members.
fn check_accepted(
    sig: &baton_server::domain::Signature,
    depth: usize,
) -> Result<(), TestCaseError> {
    let args: serde_json::Value = serde_json::from_str(&sig.args).unwrap();
    let kwargs: serde_json::Value = serde_json::from_str(&sig.kwargs).unwrap();
    prop_assert!(args.is_array(), "args {:?}", sig.args);
    prop_assert!(kwargs.is_object(), "kwargs {:?}", sig.kwargs);
    prop_assert!(!sig.name.is_empty());
    prop_assert!(sig.name.chars().count() <= convert::MAX_NAME_LEN);
    prop_assert!(!sig.name.chars().any(char::is_control));
    prop_assert!(depth <= baton_server::domain::MAX_NESTING);
    if let Some(e) = &sig.executor {
        prop_assert!(sig.members.is_empty());
        prop_assert!(sig.options.is_none());
        prop_assert!(!e.steps.is_empty());
        for s in e.steps.iter().chain(&e.on_success).chain(&e.on_failure) {
            check_accepted(s, depth + 1)?;
        }
        return Ok(());
    }
    if !sig.members.is_empty() {
        prop_assert!(sig.options.is_none());
        for m in &sig.members {
            check_accepted(m, depth + 1)?;
        }
        return Ok(());
    }
    let o = sig.options.as_ref().unwrap();
    prop_assert!(
        o.queue.is_empty() || valid_queue(&o.queue),
        "queue {:?}",
        o.queue
    );
    for ms in [
        o.countdown_ms,
        o.eta_unix_ms,
        o.timeout_ms.unwrap_or(0),
        o.retry_backoff_ms.unwrap_or(0),
        o.retry_backoff_max_ms.unwrap_or(0),
    ] {
        prop_assert!(ms <= convert::MAX_MS);
    }
    if let Some(t) = &o.throttle {
        prop_assert!(pb::ThrottleScope::try_from(t.scope).is_ok());
        prop_assert!(!(t.shared && t.key.is_empty()));
    }
    Ok(())
}

fn request() -> impl Strategy<Value = pb::SubmitChainRequest> {
    (
        prop_oneof![1 => Just(Vec::new()), 8 => prop::collection::vec(signature(), 1..3)],
        prop::collection::vec(signature(), 0..2),
        prop::collection::vec(signature(), 0..2),
        any::<bool>(),
        prop::collection::hash_map(prop_oneof![4 => "[a-z_]{1,8}", 1 => text()], text(), 0..3),
        (
            prop_oneof![3 => Just(String::new()), 1 => text()],
            prop_oneof![3 => Just(String::new()), 1 => text()],
            prop_oneof![4 => Just(0u64), 1 => millis()],
        ),
    )
        .prop_map(
            |(steps, on_success, on_failure, heavy, context, (idem, unique, deadline))| {
                pb::SubmitChainRequest {
                    steps,
                    on_success,
                    on_failure,
                    heavy,
                    context,
                    idempotency_key: idem,
                    unique_key: unique,
                    deadline_unix_ms: deadline,
                    chain_id: String::new(),
                }
            },
        )
}

fn valid_queue(q: &str) -> bool {
    (1..=convert::MAX_QUEUE_LEN).contains(&q.len())
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

/// Validation never panics, refuses with INVALID_ARGUMENT, and what it
/// accepts is what the scheduler assumes: JSON arrays and objects, names
/// and queues within their limits, no time that could overflow.
///
/// Run by hand on a thread of its own: generating nested signatures takes
/// more stack than a test thread's 2 MiB in a debug build.
#[test]
fn chain_spec_accepts_only_what_the_scheduler_assumes() {
    let check = || {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
        runner
            .run(&(request(), 1usize..12), |(req, max_steps)| {
                let limits = Limits {
                    max_steps,
                    max_payload_bytes: 4096,
                    ..Limits::default()
                };
                match convert::chain_spec(req, &limits) {
                    Err(status) => {
                        prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                        prop_assert!(!status.message().is_empty());
                    }
                    Ok(spec) => {
                        prop_assert!(!spec.steps.is_empty());
                        let all: Vec<_> = spec
                            .steps
                            .iter()
                            .chain(&spec.on_success)
                            .chain(&spec.on_failure)
                            .collect();
                        prop_assert!(all.len() <= max_steps);
                        prop_assert!(spec.deadline_ms <= convert::MAX_MS);
                        for sig in all {
                            check_accepted(sig, 0)?;
                        }
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    };
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(check)
        .expect("thread")
        .join()
        .expect("the property holds");
}

// ---------------------------------------------------------------------------
// 2. Stored records: decoding and recovery
// ---------------------------------------------------------------------------

/// A record that decodes but may not make sense: a sound chain with one
/// field knocked out of shape.
fn damaged_chain(id: String) -> impl Strategy<Value = ChainRecord> {
    (0u8..6, any::<u32>(), any::<i32>()).prop_map(move |(how, n, e)| {
        let spec = baton_server::domain::ChainSpec {
            steps: vec![baton_server::domain::Signature {
                name: "t".into(),
                args: "[]".into(),
                kwargs: "{}".into(),
                immutable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let chain_id = baton_server::domain::ChainId::parse(&id).expect("a UUID");
        let mut c = ChainRecord::new(chain_id, spec, 1);
        match how {
            0 => c.cursor = n,
            1 => c.phase = e,
            2 => c.state = e,
            3 => c.steps[0].status = baton_server::domain::StepStatus::of(e),
            4 => c.steps.clear(),
            _ => c.steps[0].signature = None,
        }
        c
    })
}

#[derive(Debug, Clone)]
enum Entry {
    /// Raw bytes in a tree, under a key.
    Garbage(&'static str, Vec<u8>, Vec<u8>),
    /// A decodable but possibly damaged live chain.
    Chain(Box<ChainRecord>),
}

fn entry() -> impl Strategy<Value = Entry> {
    let tree = prop::sample::select(vec![
        "chains",
        "live",
        "limits",
        "task_defaults",
        "idempotency",
        "dead",
        "paused",
    ]);
    let bytes = prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        (tree, bytes.clone(), bytes).prop_map(|(t, k, v)| Entry::Garbage(t, k, v)),
        "[a-f0-9]{8}-0000-7000-8000-000000000000"
            .prop_flat_map(damaged_chain)
            .prop_map(|c| Entry::Chain(Box::new(c))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Decoding arbitrary bytes as a record fails cleanly or yields a
    /// record that the consistency check can judge: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        if let Ok(chain) = ChainRecord::decode(bytes.as_slice()) {
            let _ = inconsistency(&chain);
            let _ = chain.is_ended();
        }
        let _ = Identity::decode(bytes.as_slice());
        let _ = baton_server::domain::Options::decode(bytes.as_slice());
    }
}

proptest! {
    // Each case opens a sled store and starts a scheduler: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A store holding garbage and damaged records recovers without a
    /// panic: every live chain handed to the scheduler is consistent, every
    /// one skipped is reported, and the scheduler starts and serves.
    #[test]
    fn recovery_reports_garbage_and_never_hands_the_scheduler_a_broken_chain(
        entries in prop::collection::vec(entry(), 0..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut live_ids = Vec::new();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            for e in &entries {
                match e {
                    Entry::Garbage(tree, k, v) => {
                        db.open_tree(tree).unwrap().insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    Entry::Chain(c) => {
                        use prost::Message;
                        db.open_tree("chains").unwrap().insert(c.id.as_bytes(), c.encode_to_vec()).unwrap();
                        db.open_tree("live").unwrap().insert(c.id.as_bytes(), &[]).unwrap();
                        live_ids.push(c.id.clone());
                    }
                }
            }
            db.flush().unwrap();
        }
        let store = open_when_unlocked(dir.path());
        let recovered = store.recover().unwrap();
        for c in &recovered.live_chains {
            prop_assert!(inconsistency(c).is_none(), "{:?}", inconsistency(c));
        }
        // Every live chain id written is either loaded or reported (unless
        // a later entry overwrote it with garbage or a newer record).
        let loaded: HashMap<&str, ()> = recovered.live_chains.iter().map(|c| (c.id.as_str(), ())).collect();
        let reported = recovered.corrupt.join("\n");
        for id in &live_ids {
            prop_assert!(loaded.contains_key(id.as_str()) || reported.contains(id.as_str()),
                "chain {} neither loaded nor reported: {}", id, reported);
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let stop = tokio_util::sync::CancellationToken::new();
            let settings = baton_server::scheduler::Settings {
                lease: std::time::Duration::from_secs(30),
                durable: true,
                max_workers: 10,
                max_watches: 10,
                retention: std::time::Duration::ZERO,
                priority_aging: std::time::Duration::ZERO,
            };
            let (handle, join) = baton_server::scheduler::start(store, recovered, settings, stop.clone());
            for id in &live_ids {
                if let Ok(id) = baton_server::domain::ChainId::parse(id) {
                    let _ = handle.get(id).await;
                }
            }
            assert!(handle.queues().await.is_ok());
            stop.cancel();
            join.await.unwrap();
        });
    }
}

/// sled's threads may hold the directory's lock a moment after the last
/// handle is dropped.
fn open_when_unlocked(dir: &std::path::Path) -> Shared {
    for _ in 0..100 {
        if let Ok(store) = Shared::open(dir) {
            return store;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Shared::open(dir).unwrap()
}

// ---------------------------------------------------------------------------
// 3. Throttle bookkeeping
// ---------------------------------------------------------------------------

/// Which waiters can start now (a worker is free for their task): all,
/// or all but those whose ticket is `r` modulo `m`.
#[derive(Debug, Clone, Copy)]
struct Free {
    all: bool,
    m: u32,
    r: u32,
}

impl Free {
    fn can_start(self, ticket: u32) -> bool {
        self.all || ticket % self.m != self.r
    }
}

fn free() -> impl Strategy<Value = Free> {
    prop_oneof![
        3 => Just(Free { all: true, m: 1, r: 0 }),
        1 => (2u32..4, 0u32..4).prop_map(|(m, r)| Free { all: false, m, r }),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// A new waiter on identity `id` declaring `concurrency`.
    Wait { id: usize, concurrency: u32 },
    /// The holder granted `nth` (modulo how many hold) releases.
    Release { id: usize, nth: usize },
    /// An admin limit, or none.
    Override { id: usize, limit: Option<u32> },
    /// Waiters whose ticket is `r` modulo `m` give up (cancelled chains).
    Remove { m: u32, r: u32 },
    /// Workers may have become free: waiters passed over try again.
    Repump,
}

fn op() -> impl Strategy<Value = (Op, Free)> {
    let op = prop_oneof![
        4 => (0usize..3, 1u32..4).prop_map(|(id, concurrency)| Op::Wait { id, concurrency }),
        3 => (0usize..3, any::<usize>()).prop_map(|(id, nth)| Op::Release { id, nth }),
        1 => (0usize..3, prop::option::of(1u32..5)).prop_map(|(id, limit)| Op::Override { id, limit }),
        1 => (2u32..5, 0u32..5).prop_map(|(m, r)| Op::Remove { m, r }),
        1 => Just(Op::Repump),
    ];
    (op, free())
}

fn identity(n: usize) -> Identity {
    Identity {
        task_name: String::new(),
        key: format!("k{n}"),
    }
}

/// (limit, holders, waiters) of an identity.
fn counts(t: &Throttles<u32>, id: &Identity) -> (u32, usize, usize) {
    t.info()
        .into_iter()
        .find(|i| &i.identity == id)
        .map_or((t.limit(id), 0, 0), |i| {
            (i.limit, i.holders.len(), i.waiters)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Under any sequence of waits, releases, limit changes, removed
    /// waiters and workers coming and going: no operation grants past the
    /// limit in force (a lowered limit takes nothing away, so holders may
    /// exceed it only by what they held before); a waiter is granted only
    /// when every older waiter of its identity still waiting could not
    /// start (FIFO among those that can); and once every waiter can start,
    /// nobody waits while a slot is free.
    #[test]
    fn throttles_never_grant_past_the_limit_and_grant_fifo(ops in prop::collection::vec(op(), 1..80)) {
        let mut t: Throttles<u32> = Throttles::default();
        let mut next = 0u32;
        // Per identity, in ticket order: who waits, who holds.
        let mut waiting: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut holding: Vec<Vec<u32>> = vec![Vec::new(); 3];
        for (op, free) in ops {
            let before: Vec<usize> = (0..3).map(|i| counts(&t, &identity(i)).1).collect();
            let mut can_start = |w: &Waiter<u32>| free.can_start(w.ticket);
            let grants = match op {
                Op::Wait { id, concurrency } => {
                    next += 1;
                    waiting[id].push(next);
                    let waiter = Waiter { holder: Holder::Task(TaskId::from_u128(next.into())), since: u64::from(next), ticket: next };
                    t.wait(identity(id), concurrency, None, waiter, 0, &mut can_start)
                }
                Op::Release { id, nth } => {
                    if holding[id].is_empty() {
                        Vec::new()
                    } else {
                        let n = holding[id].len();
                        let ticket = holding[id].remove(nth % n);
                        t.release(&identity(id), &Holder::Task(TaskId::from_u128(ticket.into())), 0, &mut can_start)
                    }
                }
                Op::Override { id, limit } => t.set_override(identity(id), limit, 0, &mut can_start),
                Op::Remove { m, r } => {
                    let removed = t.remove_waiters(|w| w.ticket % m == r);
                    prop_assert!(removed.iter().all(|w| w.ticket % m == r));
                    for list in &mut waiting {
                        list.retain(|ticket| ticket % m != r);
                    }
                    Vec::new()
                }
                Op::Repump => t.repump(0, &mut can_start),
            };
            for g in &grants {
                let id: usize = g.identity.key[1..].parse().unwrap();
                let ticket = g.waiter.ticket;
                prop_assert!(free.can_start(ticket), "ticket {} granted but cannot start", ticket);
                let pos = waiting[id].iter().position(|w| *w == ticket);
                prop_assert!(pos.is_some(), "ticket {} granted but not waiting on {}", ticket, id);
                let pos = pos.unwrap_or_default();
                for older in &waiting[id][..pos] {
                    prop_assert!(!free.can_start(*older),
                        "identity {}: ticket {} overtook {}, which could start", id, ticket, older);
                }
                waiting[id].remove(pos);
                holding[id].push(ticket);
            }
            for (i, held_before) in before.iter().enumerate() {
                let (limit, holders, waiters) = counts(&t, &identity(i));
                prop_assert_eq!(holders, holding[i].len());
                prop_assert_eq!(waiters, waiting[i].len());
                if holders > *held_before {
                    prop_assert!(holders <= limit as usize,
                        "identity {}: {} holders, limit {}", i, holders, limit);
                }
                if matches!(op, Op::Repump) && free.all {
                    prop_assert!(waiters == 0 || holders >= limit as usize,
                        "identity {}: {} wait while {} of {} slots are taken", i, waiters, holders, limit);
                }
            }
        }
    }
}
