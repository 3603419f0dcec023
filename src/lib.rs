//! Baton: a task broker for chains of tasks ("executors"), with throttles,
//! heavy-task routing and leases enforced by the broker.
//!
//! This crate is the public API: the generated protocol ([`pb`]) and the
//! typed Rust client. Chains are built the way Celery users write them
//! ([`Task::s`], [`Task::si`], [`Chain`]), submitted with a [`Client`] and
//! followed to their [`ChainOutcome`].
//!
//! The seed's demo: `slow` and `fast` run one after the other, each with the
//! argument `10`; the chain is stored durably once `submit` returns.
//!
//! ```no_run
//! use baton::{Chain, ChainOutcome, Client, Task};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//! let (slow, fast) = (Task::new("demo.slow"), Task::new("demo.fast"));
//!
//! let submitted = client.submit(Chain::new([slow.si([10]), fast.si([10])])).await?;
//! match client.wait(&submitted.chain_id).await? {
//!     ChainOutcome::Succeeded(result) => println!("done: {result}"),
//!     ChainOutcome::Failed(failure) => println!("{}: {}", failure.error_type, failure.message),
//!     ChainOutcome::Cancelled(reason) => println!("cancelled: {reason}"),
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

/// Generated protocol types and gRPC stubs of `baton.v1`. (The proto's
/// comments write placeholders as `<name>`, which rustdoc would take for
/// HTML.)
#[allow(missing_docs, clippy::all, rustdoc::invalid_html_tags)]
pub mod pb {
    tonic::include_proto!("baton.v1");

    /// Encoded file descriptor set of `baton.v1`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}

mod addr;
pub mod batch;
mod chain;
mod client;
mod error;
pub mod failover;
mod millis;
mod options;
mod outcome;
mod rate;
mod schedule;
mod signature;
pub mod trace;

pub use addr::{ADDR_VAR, DEFAULT_ADDR, DEPRECATED_ADDR_VAR, addr_from_env};
pub use chain::{Chain, Steps};
pub use client::{Admin, Client, Pending, Submitted, endpoint_uri};
pub use error::{Error, Result};
pub use options::{Bearer, ClientOptions, TlsOptions};
pub use outcome::{ChainError, ChainOutcome};
pub use rate::parse_rate;
pub use schedule::Schedule;
pub use signature::{Args, Executor, Signature, Task, Throttle, group};
