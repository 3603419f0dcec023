//! Baton worker SDK for Rust: runs task bodies for a Baton broker.
//!
//! A worker registers task bodies by name, opens one stream to the broker
//! and runs the assignments the broker sends down, reporting one outcome
//! for each. The SDK speaks the protocol (`baton.v1.Worker/Session`):
//! heartbeats, reconnecting after a broker restart without losing its runs,
//! in-body throttles, cancellation and a graceful drain on shutdown. A task
//! body only sees a [`TaskContext`] and returns
//! `Result<serde_json::Value, TaskError>`. Given several brokers sharing
//! one database (`Worker::builder("h1:7070,h2:7070")`), it finds the
//! leader among them and follows it on failover ([`baton::failover`]).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use baton_worker::{TaskContext, TaskError, Throttle, Worker};
//! use serde_json::{Value, json};
//!
//! /// Creates a volume: at most 4 at once per tenant, across task names.
//! async fn create_volume(ctx: TaskContext) -> Result<Value, TaskError> {
//!     let tenant: String = ctx.arg(0)?;
//!     let size: u32 = ctx.arg(1)?;
//!     let per_tenant = Throttle::new(4).key(format!("tenant:{tenant}")).shared();
//!     let id = ctx
//!         .throttle(per_tenant, async {
//!             // ... call the cloud's API ...
//!             format!("vol-{size}")
//!         })
//!         .await?;
//!     Ok(json!({ "volume": id }))
//! }
//!
//! /// Polls until the volume is available; the broker counts the polls.
//! async fn poll_volume(ctx: TaskContext) -> Result<Value, TaskError> {
//!     let available = ctx.polls >= 3; // ... ask the cloud ...
//!     if available {
//!         Ok(Value::Null)
//!     } else {
//!         Err(TaskError::retry_later(Duration::from_secs(5)).with_message("creating"))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), baton_worker::Error> {
//!     Worker::builder("http://127.0.0.1:7070")
//!         .name("openstack-1")
//!         .queues(["general", "heavy"])
//!         .concurrency(8)
//!         .task("volume.create", create_volume)
//!         .task("volume.poll", poll_volume)
//!         .build()?
//!         .run() // until ctrl-c or SIGTERM, then drain
//!         .await
//! }
//! ```
//!
//! Modules, in reading order:
//! - `worker`: [`Worker`] and its builder, the public entry point;
//! - `context`: [`TaskContext`], what a body sees and may ask for;
//! - `outcome`: [`TaskError`] and how a run's end becomes an Outcome;
//! - `throttle`: [`Throttle`] and the [`Slot`] guard of in-body throttles;
//! - `runtime`: the session task that owns the stream and decides (connect,
//!   serve, reconnect, drain);
//! - `link`: one connection on the wire (greeting, failures worth a retry,
//!   Goodbye, backoff);
//! - `ledger`: what the worker holds across connections (runs, outcomes
//!   waiting for their acknowledgment, throttle slots and requests);
//! - `error`: [`Error`], why a worker cannot start or go on;
//! - [`error_type`]: the failure types the SDK reports on its own.

#![warn(missing_docs)]

mod context;
mod error;
pub mod error_type;
mod ledger;
mod link;
mod outcome;
mod runtime;
mod throttle;
mod trace;
mod worker;

pub use context::TaskContext;
pub use error::Error;
pub use outcome::TaskError;
pub use throttle::{Slot, Throttle};
pub use worker::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_QUEUE, Worker, WorkerBuilder};
