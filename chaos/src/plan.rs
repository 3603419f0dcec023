//! The chains of a run, drawn from a seed: what each one does and how it
//! must end.
//!
//! Every step runs the same body (see `worker`), told by its keyword
//! arguments ([`Behaviour`]) how long to work, whether to fail, poll or take
//! an in-body throttle. Task names still differ by kind, because routing and
//! throttle identities are per task name. A chain's [`Design`] is kept by
//! the harness, so the checker knows the expected end of every chain without
//! asking the broker.

use std::time::Duration;

use baton::{Chain, Signature, Task, Throttle};
use serde::{Deserialize, Serialize};

pub const LIGHT: &str = "chaos.light";
pub const HEAVY: &str = "chaos.heavy";
pub const THROTTLED: &str = "chaos.throttled";
pub const INBODY: &str = "chaos.inbody";
pub const FLAKY: &str = "chaos.flaky";
pub const POLL: &str = "chaos.poll";
pub const DOOMED: &str = "chaos.doomed";
pub const ON_SUCCESS: &str = "chaos.on_success";
pub const ON_FAILURE: &str = "chaos.on_failure";

/// Every task name a chaos worker registers.
pub const TASKS: [&str; 9] = [
    LIGHT, HEAVY, THROTTLED, INBODY, FLAKY, POLL, DOOMED, ON_SUCCESS, ON_FAILURE,
];

/// Error type of a designed fatal failure.
pub const FATAL_TYPE: &str = "ChaosFatal";
/// Error type of a designed retryable failure.
pub const FLAKY_TYPE: &str = "ChaosFlaky";
/// Error type the broker gives a step lost to dead workers too often.
pub const WORKER_LOST: &str = "WorkerLost";

/// How a throttle identity is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Declared on the signature, held by one run.
    Declared,
    /// Taken inside the body with `ctx.acquire`.
    InBody,
    /// Declared on the signature, held by the chain until it ends.
    ChainScoped,
    /// The same shared key taken declared by some steps and in-body by
    /// others: one identity, two forms.
    Mixed,
}

/// A throttle identity the plan uses, with its one limit.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// How the checker names it: `task/key`, or `shared:key`.
    pub label: &'static str,
    /// The task name of a non-shared identity (`None`: shared key).
    pub task: Option<&'static str>,
    pub key: &'static str,
    pub limit: u32,
    pub form: Form,
}

impl Identity {
    /// The declared throttle of a signature.
    fn declared(&self) -> Throttle {
        let throttle = Throttle::new(self.limit).key(self.key);
        let throttle = if self.task.is_none() {
            throttle.shared()
        } else {
            throttle
        };
        if self.form == Form::ChainScoped {
            throttle.chain_scoped()
        } else {
            throttle
        }
    }

    /// The in-body throttle a body asks for.
    fn in_body(&self) -> InBody {
        InBody {
            label: self.label.to_owned(),
            key: self.key.to_owned(),
            shared: self.task.is_none(),
            limit: self.limit,
        }
    }
}

/// The identities of the plan. Limits 1..=3; each label has one limit.
pub const IDENTITIES: [Identity; 7] = [
    Identity {
        label: "chaos.throttled/vm-1",
        task: Some(THROTTLED),
        key: "vm-1",
        limit: 1,
        form: Form::Declared,
    },
    Identity {
        label: "chaos.throttled/vm-2",
        task: Some(THROTTLED),
        key: "vm-2",
        limit: 2,
        form: Form::Declared,
    },
    Identity {
        label: "shared:tenant-a",
        task: None,
        key: "tenant-a",
        limit: 3,
        form: Form::Declared,
    },
    Identity {
        label: "chaos.inbody/lock-1",
        task: Some(INBODY),
        key: "lock-1",
        limit: 1,
        form: Form::InBody,
    },
    Identity {
        label: "shared:tenant-b",
        task: None,
        key: "tenant-b",
        limit: 2,
        form: Form::InBody,
    },
    Identity {
        label: "shared:quota-c",
        task: None,
        key: "quota-c",
        limit: 2,
        form: Form::ChainScoped,
    },
    Identity {
        label: "shared:mixed-m",
        task: None,
        key: "mixed-m",
        limit: 1,
        form: Form::Mixed,
    },
];

const VM_1: usize = 0;
const VM_2: usize = 1;
const TENANT_A: usize = 2;
const LOCK_1: usize = 3;
const TENANT_B: usize = 4;
const QUOTA_C: usize = 5;
const MIXED_M: usize = 6;

/// How a body ends, before any work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fail {
    /// Works and succeeds.
    #[default]
    Never,
    /// Fails retryably on its first try (no retry yet), then succeeds.
    FirstTry,
    /// Fails retryably every time, until the retries run out.
    Always,
    /// Fails fatally.
    Fatal,
    /// Asks to be polled again this many times, then succeeds.
    Polls(u32),
    /// Asks to be polled again forever (until its chain is cancelled).
    Forever,
}

/// An in-body throttle a body takes around its work.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InBody {
    pub label: String,
    pub key: String,
    pub shared: bool,
    pub limit: u32,
}

/// What a body does: the step's keyword arguments.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Behaviour {
    pub seq: u64,
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail: Fail,
    /// The declared task-scoped identity the run holds (for the journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_body: Option<InBody>,
    /// Filler that makes the chain's record large (see [`LARGE`]); the
    /// body ignores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

/// Sizes of the filler of a large chain: past sled's blob threshold (about
/// 128 KiB), so its record goes to a blob file of its own.
pub const LARGE: std::ops::RangeInclusive<usize> = 150_000..=400_000;

/// Delay a polling body asks for.
pub const POLL_DELAY: Duration = Duration::from_millis(100);
/// Delay a body that polls forever asks for.
pub const FOREVER_DELAY: Duration = Duration::from_millis(200);
/// First retry delay of a flaky step.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Retries of a flaky step.
pub const MAX_RETRIES: u32 = 2;

/// One step of a chain.
#[derive(Clone, Debug)]
pub struct StepDesign {
    pub name: &'static str,
    /// Heavy on the signature (the chain may be heavy as a whole too).
    pub heavy: bool,
    /// Index into [`IDENTITIES`] of a declared throttle.
    pub declared: Option<usize>,
    pub behaviour: Behaviour,
}

/// How a chain must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Succeed,
    /// Main step `step` fails for good with this error type.
    Fail {
        step: usize,
        error_type: &'static str,
    },
    /// The harness cancels it; step 0 polls until then.
    Cancel,
}

/// What kind of chain, for the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Plain,
    Heavy,
    Declared,
    TenantHeavy,
    InBody,
    Mixed,
    Retry,
    Poll,
    Doomed,
    Exhausted,
    ChainScoped,
    Cancel,
}

/// Kinds and their weights in a plan.
const KINDS: [(Kind, u32); 12] = [
    (Kind::Plain, 18),
    (Kind::Heavy, 9),
    (Kind::Declared, 13),
    (Kind::TenantHeavy, 5),
    (Kind::InBody, 12),
    (Kind::Mixed, 6),
    (Kind::Retry, 9),
    (Kind::Poll, 8),
    (Kind::Doomed, 8),
    (Kind::Exhausted, 3),
    (Kind::ChainScoped, 5),
    (Kind::Cancel, 4),
];

/// One chain of the plan.
#[derive(Clone, Debug)]
pub struct Design {
    pub seq: u64,
    pub kind: Kind,
    /// The whole chain is heavy (every step and callback).
    pub heavy: bool,
    pub steps: Vec<StepDesign>,
    pub expect: Expect,
    /// Index into [`IDENTITIES`] of the chain-scoped throttle taken by
    /// step 0, held until the chain ends.
    pub chain_hold: Option<usize>,
}

impl Design {
    /// Bytes of filler the chain carries (0: a small chain).
    pub fn pad_bytes(&self) -> usize {
        self.steps.first().map_or(0, |s| s.behaviour.pad.len())
    }
}

impl Design {
    /// The queue a main step (or, with `None`, a callback) is routed to.
    pub fn queue(&self, step: Option<usize>) -> &'static str {
        let heavy = self.heavy || step.is_some_and(|i| self.steps.get(i).is_some_and(|s| s.heavy));
        if heavy { "heavy" } else { "general" }
    }

    /// The chain to submit; `key` makes its idempotency key unique to
    /// the run.
    pub fn chain(&self, key: &str) -> Chain {
        let steps: Vec<Signature> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| self.signature(i, step))
            .collect();
        let callback = |name: &'static str| {
            let behaviour = Behaviour {
                seq: self.seq,
                sleep_ms: 5,
                ..Behaviour::default()
            };
            Task::new(name)
                .s(())
                .kwargs(serde_json::to_value(behaviour).expect("kwargs"))
        };
        let chain = Chain::new(steps)
            .on_success(callback(ON_SUCCESS))
            .on_failure(callback(ON_FAILURE))
            .context("seq", self.seq.to_string())
            .idempotency_key(format!("chaos-{key}-{}", self.seq));
        if self.heavy { chain.heavy() } else { chain }
    }

    fn signature(&self, index: usize, step: &StepDesign) -> Signature {
        let kwargs = serde_json::to_value(&step.behaviour).expect("kwargs");
        let mut signature = Task::new(step.name).s(()).kwargs(kwargs);
        if step.heavy {
            signature = signature.heavy();
        }
        if let Some(i) = step.declared {
            signature = signature.throttle(IDENTITIES[i].declared());
        }
        if index == 0
            && let Some(i) = self.chain_hold
        {
            signature = signature.throttle(IDENTITIES[i].declared());
        }
        match step.behaviour.fail {
            Fail::FirstTry | Fail::Always => signature
                .max_retries(MAX_RETRIES)
                .retry_backoff(RETRY_BACKOFF),
            Fail::Polls(_) => signature.max_polls(20),
            Fail::Forever => signature.max_polls(1_000_000),
            Fail::Never | Fail::Fatal => signature,
        }
    }
}

/// Draws `chains` designs from `seed`.
///
/// The declared steps of the mixed identity (`shared:mixed-m`, taken
/// declared by some steps and in-body by others) are heavy unless
/// `mixed_on_general`: in the general queue they can deadlock the broker
/// (see docs/reliability.md, "Findings"), because in-body waiters of the
/// identity may fill every general worker while the declared holder waits
/// in the queue for one. Heavy, they run on the heavy-only worker, which no
/// in-body waiter ever occupies.
///
/// With `large_every` N > 0, one chain in N (the last of every N) carries
/// filler of [`LARGE`] bytes in its first step's keyword arguments; the
/// sizes come from a stream of their own, so the rest of the plan is the
/// same as without.
pub fn generate(seed: u64, chains: u64, mixed_on_general: bool, large_every: u64) -> Vec<Design> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sizes = fastrand::Rng::with_seed(seed ^ 0x1a26_e000_0000_0019);
    (0..chains)
        .map(|seq| {
            let mut design = design(&mut rng, seq, mixed_on_general);
            if large_every > 0 && seq % large_every == large_every - 1 {
                let size = sizes.usize(LARGE);
                design.steps[0].behaviour.pad = "p".repeat(size);
            }
            design
        })
        .collect()
}

fn pick_kind(rng: &mut fastrand::Rng) -> Kind {
    let total: u32 = KINDS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(0..total);
    for (kind, weight) in KINDS {
        if roll < weight {
            return kind;
        }
        roll -= weight;
    }
    Kind::Plain
}

fn design(rng: &mut fastrand::Rng, seq: u64, mixed_on_general: bool) -> Design {
    let kind = pick_kind(rng);
    let behaviour = |rng: &mut fastrand::Rng, sleep: std::ops::RangeInclusive<u64>| Behaviour {
        seq,
        sleep_ms: rng.u64(sleep),
        ..Behaviour::default()
    };
    let light = |rng: &mut fastrand::Rng| StepDesign {
        name: LIGHT,
        heavy: false,
        declared: None,
        behaviour: behaviour(rng, 5..=60),
    };
    let declared = |rng: &mut fastrand::Rng, name: &'static str, identity: usize| {
        let mut behaviour = behaviour(rng, 50..=250);
        behaviour.hold = Some(IDENTITIES[identity].label.to_owned());
        StepDesign {
            name,
            heavy: false,
            declared: Some(identity),
            behaviour,
        }
    };
    let in_body = |rng: &mut fastrand::Rng, identity: usize| {
        let mut behaviour = behaviour(rng, 50..=250);
        behaviour.in_body = Some(IDENTITIES[identity].in_body());
        StepDesign {
            name: INBODY,
            heavy: false,
            declared: None,
            behaviour,
        }
    };
    let failing = |rng: &mut fastrand::Rng, name: &'static str, fail: Fail| {
        let mut behaviour = behaviour(rng, 5..=40);
        behaviour.fail = fail;
        StepDesign {
            name,
            heavy: false,
            declared: None,
            behaviour,
        }
    };
    let mut heavy = false;
    let mut chain_hold = None;
    let mut expect = Expect::Succeed;
    let steps = match kind {
        Kind::Plain => (0..rng.usize(1..=3)).map(|_| light(rng)).collect(),
        Kind::Heavy => {
            heavy = true;
            (0..rng.usize(1..=2))
                .map(|_| StepDesign {
                    name: HEAVY,
                    heavy: false,
                    declared: None,
                    behaviour: behaviour(rng, 150..=600),
                })
                .collect()
        }
        Kind::Declared => {
            let identity = match rng.u32(0..3) {
                0 => VM_1,
                1 => VM_2,
                _ => MIXED_M,
            };
            let mut step = declared(rng, THROTTLED, identity);
            step.heavy = identity == MIXED_M && !mixed_on_general;
            vec![light(rng), step, light(rng)]
        }
        Kind::TenantHeavy => {
            let mut step = declared(rng, HEAVY, TENANT_A);
            step.heavy = true;
            step.behaviour.sleep_ms = rng.u64(150..=500);
            vec![step, light(rng)]
        }
        Kind::InBody => {
            let identity = match rng.u32(0..3) {
                0 => LOCK_1,
                1 => TENANT_B,
                _ => MIXED_M,
            };
            vec![light(rng), in_body(rng, identity)]
        }
        Kind::Mixed => {
            let mut flaky = failing(rng, FLAKY, Fail::FirstTry);
            flaky.heavy = true;
            let mut poll = declared(rng, THROTTLED, VM_2);
            let polls = rng.u32(1..=2);
            poll.behaviour.fail = Fail::Polls(polls);
            vec![light(rng), flaky, poll, in_body(rng, TENANT_B)]
        }
        Kind::Retry => vec![failing(rng, FLAKY, Fail::FirstTry), light(rng)],
        Kind::Poll => {
            let polls = rng.u32(1..=3);
            vec![light(rng), failing(rng, POLL, Fail::Polls(polls))]
        }
        Kind::Doomed => {
            expect = Expect::Fail {
                step: 1,
                error_type: FATAL_TYPE,
            };
            vec![light(rng), failing(rng, DOOMED, Fail::Fatal), light(rng)]
        }
        Kind::Exhausted => {
            expect = Expect::Fail {
                step: 0,
                error_type: FLAKY_TYPE,
            };
            vec![failing(rng, FLAKY, Fail::Always), light(rng)]
        }
        Kind::ChainScoped => {
            chain_hold = Some(QUOTA_C);
            let mut steps = vec![light(rng), light(rng)];
            for step in &mut steps {
                step.behaviour.sleep_ms = rng.u64(30..=150);
            }
            steps
        }
        Kind::Cancel => {
            expect = Expect::Cancel;
            vec![failing(rng, POLL, Fail::Forever), light(rng)]
        }
    };
    Design {
        seq,
        kind,
        heavy,
        steps,
        expect,
        chain_hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_plan() {
        let a = generate(42, 200, false, 0);
        let b = generate(42, 200, false, 0);
        let summary = |plan: &[Design]| {
            plan.iter()
                .map(|d| (d.kind, d.steps.len(), d.expect))
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&a), summary(&b));
        assert_ne!(summary(&a), summary(&generate(43, 200, false, 0)));
        for kind in KINDS.map(|(k, _)| k) {
            assert!(a.iter().any(|d| d.kind == kind), "{kind:?} drawn");
        }
    }

    #[test]
    fn every_identity_has_one_limit_and_a_unique_label() {
        for (i, a) in IDENTITIES.iter().enumerate() {
            assert!((1..=3).contains(&a.limit));
            for b in &IDENTITIES[i + 1..] {
                assert_ne!(a.label, b.label);
            }
            let label = match a.task {
                Some(task) => format!("{task}/{}", a.key),
                None => format!("shared:{}", a.key),
            };
            assert_eq!(a.label, label);
        }
    }

    #[test]
    fn chains_carry_their_behaviour_routing_and_keys() {
        let plan = generate(7, 300, false, 0);
        let heavy = plan.iter().find(|d| d.kind == Kind::Heavy).unwrap();
        let request = baton::pb::SubmitChainRequest::from(heavy.chain("run"));
        assert!(request.heavy);
        assert_eq!(request.context["seq"], heavy.seq.to_string());
        assert_eq!(request.idempotency_key, format!("chaos-run-{}", heavy.seq));
        assert_eq!(heavy.queue(None), "heavy");

        let scoped = plan.iter().find(|d| d.kind == Kind::ChainScoped).unwrap();
        let request = baton::pb::SubmitChainRequest::from(scoped.chain("run"));
        let throttle = request.steps[0]
            .options
            .as_ref()
            .and_then(|o| o.throttle.clone())
            .unwrap();
        assert_eq!(throttle.scope(), baton::pb::ThrottleScope::Chain);
        assert!(throttle.shared);
        let behaviour: Behaviour = serde_json::from_str(&request.steps[1].kwargs).unwrap();
        assert_eq!(behaviour.seq, scoped.seq);
        assert_eq!(request.on_success[0].name, ON_SUCCESS);
        assert!(!request.on_failure[0].immutable, "receives the record");
    }

    #[test]
    fn declared_steps_of_the_mixed_identity_are_heavy_unless_asked() {
        let mixed = |plan: &[Design]| -> Vec<bool> {
            plan.iter()
                .flat_map(|d| &d.steps)
                .filter(|s| s.declared == Some(MIXED_M))
                .map(|s| s.heavy)
                .collect()
        };
        let safe = mixed(&generate(5, 500, false, 0));
        assert!(!safe.is_empty() && safe.iter().all(|heavy| *heavy));
        assert!(mixed(&generate(5, 500, true, 0)).iter().all(|heavy| !heavy));
    }

    #[test]
    fn one_chain_in_n_is_large_and_the_rest_of_the_plan_is_unchanged() {
        let plain = generate(9, 100, false, 0);
        let large = generate(9, 100, false, 10);
        assert!(plain.iter().all(|d| d.pad_bytes() == 0));
        for (a, b) in plain.iter().zip(&large) {
            assert_eq!(
                (a.kind, a.steps.len(), a.expect),
                (b.kind, b.steps.len(), b.expect)
            );
            assert_eq!(b.pad_bytes() > 0, b.seq % 10 == 9, "chain {}", b.seq);
            if b.pad_bytes() > 0 {
                assert!(LARGE.contains(&b.pad_bytes()));
                let request = baton::pb::SubmitChainRequest::from(b.chain("run"));
                assert!(request.steps[0].kwargs.len() > 128 * 1024);
            }
        }
    }
}
