//! The simulated application: task names, their registered defaults, the
//! throttle identities and their limits, and random chains over them.
//!
//! - `a`, `b`: plain tasks; their signatures may declare the task-scoped
//!   throttle `key k1` (shared by both names, limit 1) or the chain-scoped
//!   `key prov` (limit 2, Waldur's "at most N provisioning per tenant");
//! - `h`: heavy by its registered defaults (routed to `heavy`);
//! - `t`: throttled by its registered defaults (the seed's `@throttle`),
//!   identity `t[*]`, limit 1;
//! - `io`: routed to queue `io` by its signatures;
//! - `x`: takes an in-body slot (`key tenant`, limit 2, or `key k1`,
//!   shared with the declared throttle of `a` and `b`) while it runs.

use std::collections::BTreeMap;

use crate::domain::*;

use super::rng::Rng;

pub const NAMES: [&str; 6] = ["a", "b", "h", "t", "io", "x"];
pub const QUEUES: [&str; 3] = [GENERAL_QUEUE, HEAVY_QUEUE, "io"];

fn shared(key: &str, concurrency: u32, scope: ThrottleScope) -> Throttle {
    Throttle {
        concurrency,
        key: key.into(),
        shared: true,
        scope: scope as i32,
        rate: None,
    }
}

pub fn k1() -> Throttle {
    shared("k1", 1, ThrottleScope::Task)
}

pub fn prov() -> Throttle {
    shared("prov", 2, ThrottleScope::Chain)
}

pub fn tenant() -> Throttle {
    shared("tenant", 2, ThrottleScope::Task)
}

/// The defaults every worker registers for `name`.
pub fn defaults(name: &str) -> Options {
    match name {
        "h" => Options {
            heavy: true,
            ..Options::default()
        },
        "t" => Options {
            throttle: Some(Throttle {
                concurrency: 1,
                ..Throttle::default()
            }),
            ..Options::default()
        },
        _ => Options::default(),
    }
}

/// Every identity the scenario uses.
pub fn identities() -> Vec<Identity> {
    vec![
        Identity::of("t", &Throttle::default()),
        Identity::of("a", &k1()),
        Identity::of("a", &prov()),
        Identity::of("x", &tenant()),
    ]
}

/// The declared limit of an identity.
pub fn limit(identity: &Identity) -> u32 {
    match identity.key.as_str() {
        "prov" | "tenant" => 2,
        _ => 1,
    }
}

fn signature(rng: &mut Rng, main: bool) -> Signature {
    let name = match rng.below(100) {
        0..25 => "a",
        25..45 => "b",
        45..55 => "h",
        55..70 => "t",
        70..80 => "io",
        _ => "x",
    };
    let mut o = Options::default();
    if matches!(name, "a" | "b") {
        match rng.below(100) {
            0..25 => o.throttle = Some(k1()),
            25..40 if main => o.throttle = Some(prov()),
            _ => {}
        }
    }
    if name == "io" {
        o.queue = "io".into();
    }
    if rng.chance(1, 5) {
        o.max_retries = Some(u32::try_from(rng.range(1, 3)).unwrap_or(1));
        o.retry_backoff_ms = Some(rng.range(50, 400));
        o.retry_backoff_max_ms = Some(2000);
    }
    if rng.chance(1, 10) {
        o.countdown_ms = rng.range(1, 3000);
    }
    if rng.chance(1, 12) {
        o.timeout_ms = Some(rng.range(300, 2500));
    }
    if rng.chance(3, 10) {
        o.max_polls = Some(u32::try_from(rng.range(2, 5)).unwrap_or(2));
    }
    if rng.chance(1, 10) {
        o.priority = i32::try_from(rng.below(3)).unwrap_or(0) - 1;
    }
    Signature {
        name: name.into(),
        args: "[]".into(),
        kwargs: "{}".into(),
        immutable: rng.chance(1, 2),
        options: (o != Options::default()).then_some(o),
        ..Signature::default()
    }
}

/// A group (members side by side) or a nested executor, of 1 to 3 tasks
/// drawn as callbacks are (a member never takes the chain-scoped `prov`:
/// the parent may hold it, see `Core::chain_holds`, and the model counts
/// holders by chain), one of them sometimes an executor itself.
fn composite(rng: &mut Rng) -> Signature {
    let tasks = |rng: &mut Rng| -> Vec<Signature> {
        (0..rng.range(1, 3))
            .map(|_| signature(rng, false))
            .collect()
    };
    let executor = |rng: &mut Rng| Executor {
        steps: tasks(rng),
        on_success: if rng.chance(1, 3) {
            tasks(rng)
        } else {
            Vec::new()
        },
        on_failure: if rng.chance(1, 3) {
            tasks(rng)
        } else {
            Vec::new()
        },
    };
    if rng.chance(1, 3) {
        return Signature {
            name: "executor".into(),
            executor: Some(executor(rng)),
            ..Signature::default()
        };
    }
    let mut members = tasks(rng);
    if rng.chance(1, 4) {
        members.push(Signature {
            name: "executor".into(),
            executor: Some(executor(rng)),
            ..Signature::default()
        });
    }
    Signature {
        name: "group".into(),
        immutable: rng.chance(1, 2),
        members,
        ..Signature::default()
    }
}

/// A random chain submitted at `now`.
pub fn chain(rng: &mut Rng, now: UnixMs) -> ChainSpec {
    let steps = (0..rng.range(1, 4))
        .map(|_| {
            if rng.chance(1, 8) {
                composite(rng)
            } else {
                signature(rng, true)
            }
        })
        .collect();
    let callbacks = |rng: &mut Rng| -> Vec<Signature> {
        if rng.chance(1, 2) {
            Vec::new()
        } else {
            (0..rng.range(1, 2))
                .map(|_| signature(rng, false))
                .collect()
        }
    };
    let on_success = callbacks(rng);
    let on_failure = callbacks(rng);
    ChainSpec {
        steps,
        on_success,
        on_failure,
        heavy: rng.chance(1, 10),
        context: BTreeMap::from([("user".to_owned(), "sim".to_owned())]),
        idempotency_key: if rng.chance(3, 20) {
            format!("idem-{}", rng.below(6))
        } else {
            String::new()
        },
        unique_key: if rng.chance(3, 20) {
            format!("u-{}", rng.below(4))
        } else {
            String::new()
        },
        deadline_ms: if rng.chance(3, 20) {
            now + rng.range(2_000, 40_000)
        } else {
            0
        },
        owner: String::new(),
        chain_id: rng.chance(17, 20).then(|| ChainId::from_uuid(rng.uuid())),
        parent: None,
        input: None,
        input_apart: false,
    }
}
