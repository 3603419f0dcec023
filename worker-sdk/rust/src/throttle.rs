//! In-body throttles: the `with throttle(concurrency=1, key=k):` of the
//! seed, as a [`Throttle`] description and a [`Slot`] guard.
//!
//! A running task asks the broker for a slot (ThrottleAcquire), waits for the
//! grant (ThrottleGranted) and gives it back (ThrottleRelease) when the guard
//! is dropped. Waiting is done by the broker, in FIFO order, so nothing
//! polls. Dropping is synchronous, so the guard only posts a message to the
//! worker's session task, which owns the stream and does the sending.

use std::sync::atomic::{AtomicU64, Ordering};

use baton::pb;

use crate::runtime::{Event, Events};

/// An in-body throttle: at most `concurrency` holders at once per identity,
/// and with a rate, at most that many grants per period
/// ([`Throttle::rate`]: "at most 10 calls a second to this API", across
/// every worker).
///
/// The identity is (the running task's name, key); with [`Throttle::shared`]
/// it is the key alone, shared by every task name that uses it (Waldur's
/// "at most 4 provisioning per tenant" is
/// `Throttle::new(4).key(format!("tenant:{id}")).shared()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// Maximum simultaneous holders; 0 lets the broker use its default, 1.
    concurrency: u32,
    /// The key; empty means `*`, one identity for the whole task name.
    key: String,
    /// Whether the identity is the key alone.
    shared: bool,
    /// At most this many grants per period, if set.
    rate: Option<pb::Rate>,
}

impl Throttle {
    /// A throttle allowing `concurrency` holders at once (0 means the
    /// broker's default, 1), keyed `*` within the task's name.
    pub fn new(concurrency: u32) -> Self {
        Self {
            concurrency,
            key: String::new(),
            shared: false,
            rate: None,
        }
    }

    /// At most `count` grants per `period` (in milliseconds), evenly
    /// spaced, and no limit on holders at once (add one with
    /// [`Throttle::new`]`(n).with_rate(..)`).
    pub fn rate(count: u32, period: std::time::Duration) -> Self {
        Self::new(0).with_rate(count, period)
    }

    /// Adds a rate: at most `count` grants per `period`.
    #[must_use]
    pub fn with_rate(mut self, count: u32, period: std::time::Duration) -> Self {
        self.rate = Some(pb::Rate {
            count,
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            burst: 0,
        });
        self
    }

    /// Adds a rate written as Celery writes it (`"10/s"`, `"100/m"`).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the text.
    pub fn per(mut self, rate: &str) -> Result<Self, String> {
        self.rate = Some(baton::parse_rate(rate)?);
        Ok(self)
    }

    /// Grants of the rate allowed at once after a quiet spell (default 1).
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        if let Some(rate) = &mut self.rate {
            rate.burst = burst;
        }
        self
    }

    /// Throttles per key (e.g. one volume, one tenant) instead of per task
    /// name.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Makes the key alone the identity, shared across task names.
    #[must_use]
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }
}

impl From<Throttle> for pb::Throttle {
    /// The protocol form; an in-body slot always belongs to one run
    /// (`THROTTLE_SCOPE_TASK`).
    fn from(throttle: Throttle) -> Self {
        Self {
            concurrency: throttle.concurrency,
            key: throttle.key,
            shared: throttle.shared,
            scope: pb::ThrottleScope::Task.into(),
            rate: throttle.rate,
        }
    }
}

/// A held in-body throttle slot, from
/// [`TaskContext::acquire`](crate::TaskContext::acquire). Dropping it
/// releases the slot.
///
/// The broker also releases it when the run ends, so a slot forgotten in a
/// leaked task cannot outlive its run.
#[derive(Debug)]
#[must_use = "the slot is released as soon as it is dropped"]
pub struct Slot {
    /// The id of the request that took the slot, unique in this process.
    request_id: u64,
    /// Where the release goes; the session task sends it on the stream.
    events: Events,
}

impl Slot {
    /// Arms the guard for a request that was just posted: from now on,
    /// dropping it releases the slot, or abandons the request if it has not
    /// been granted yet.
    pub(crate) fn new(request_id: u64, events: Events) -> Self {
        Self { request_id, events }
    }

    /// The id of the request that took this slot (as in ThrottleAcquire).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Releases the slot now; the same as dropping it.
    pub fn release(self) {}
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A closed channel means the worker has stopped; the broker frees
        // the slot with the run, so there is nothing left to do.
        let _ = self.events.send(Event::Release {
            request_id: self.request_id,
        });
    }
}

/// A request id unique within this process (0 is never used: WorkerError
/// uses it for "no request").
pub(crate) fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn builder_maps_to_a_task_scoped_protocol_throttle() {
        let t: pb::Throttle = Throttle::new(4).key("tenant:42").shared().into();
        assert_eq!(
            t,
            pb::Throttle {
                concurrency: 4,
                key: "tenant:42".into(),
                shared: true,
                scope: pb::ThrottleScope::Task.into(),
                rate: None,
            }
        );
        let t: pb::Throttle = Throttle::rate(10, std::time::Duration::from_secs(1))
            .burst(3)
            .key("api")
            .shared()
            .into();
        assert_eq!((t.concurrency, t.key.as_str(), t.shared), (0, "api", true));
        assert_eq!(
            t.rate,
            Some(pb::Rate {
                count: 10,
                period_ms: 1000,
                burst: 3
            })
        );
        assert!(Throttle::new(1).per("ten/s").is_err());
        let t: pb::Throttle = Throttle::new(1).into();
        assert_eq!((t.key.as_str(), t.shared), ("", false));
    }

    #[test]
    fn request_ids_are_unique_and_never_zero() {
        let a = next_request_id();
        let b = next_request_id();
        assert!(a > 0 && b > a);
    }

    #[test]
    fn dropping_a_slot_posts_its_release() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let slot = Slot::new(9, tx);
        assert_eq!(slot.request_id(), 9);
        slot.release();
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Release { request_id: 9 })
        ));
    }
}
