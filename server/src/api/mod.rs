//! The gRPC edge: decode, validate, call the scheduler, map errors.
//!
//! Nothing here decides anything: every rule lives in the scheduler.

pub mod convert;
mod oversize;
mod worker;

use std::pin::Pin;

use baton::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub use self::convert::Limits;
pub use self::oversize::{MessageLimit, Oversize};
pub use self::worker::WorkerService;
use crate::auth::Caller;
use crate::domain::{ChainId, Identity};
use crate::scheduler::rate::Rate;
use crate::scheduler::throttle;
use crate::scheduler::{self, Dedup, Handle, Holder};

impl From<scheduler::Error> for Status {
    fn from(e: scheduler::Error) -> Self {
        match e {
            scheduler::Error::NotFound(m) => Status::not_found(m),
            scheduler::Error::ShuttingDown => Status::unavailable("broker is shutting down"),
            scheduler::Error::Conflict(m) => Status::failed_precondition(m),
            scheduler::Error::Exists(m) => Status::already_exists(m),
            scheduler::Error::Exhausted(m) => Status::resource_exhausted(m),
            scheduler::Error::Unavailable(m) => Status::unavailable(m),
            scheduler::Error::Store(m) => {
                tracing::error!(cause = %m, "store failure");
                Status::unavailable("the broker's store is failing; retry later")
            }
        }
    }
}

/// The client service: submit, get, watch, cancel.
pub struct BrokerService {
    pub handle: Handle,
    pub limits: Limits,
}

impl BrokerService {
    /// Lets `caller` at chain `id` (an owner never changes, so a check
    /// before the watch or cancel cannot go stale).
    async fn check_sees(&self, caller: &Caller, id: ChainId) -> Result<(), Status> {
        if caller.sees_all() {
            return Ok(());
        }
        caller.check_sees(&self.handle.get(id).await?)
    }
}

/// The answer to one submitted chain.
fn submitted_view(submitted: scheduler::Submitted) -> pb::SubmitChainResponse {
    let dedup = match submitted.dedup {
        None => pb::Dedup::Unspecified,
        Some(Dedup::IdempotencyKey) => pb::Dedup::IdempotencyKey,
        Some(Dedup::UniqueKey) => pb::Dedup::UniqueKey,
        Some(Dedup::ChainId) => pb::Dedup::ChainId,
    };
    pb::SubmitChainResponse {
        chain_id: submitted.chain_id.to_string(),
        dedup: dedup as i32,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ChainEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::broker_server::Broker for BrokerService {
    async fn submit_chain(
        &self,
        request: Request<pb::SubmitChainRequest>,
    ) -> Result<Response<pb::SubmitChainResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut spec = convert::chain_spec(request.into_inner(), &self.limits)?;
        caller.claim(&mut spec);
        let trace_id = spec_trace_id(&spec);
        let submitted = self.handle.submit(spec).await?;
        record_chain(submitted.chain_id);
        if let Some(t) = &trace_id {
            tracing::Span::current().record("trace_id", t.as_str());
        }
        tracing::debug!(dedup = ?submitted.dedup, "chain submitted");
        Ok(Response::new(submitted_view(submitted)))
    }

    async fn submit_chains(
        &self,
        request: Request<pb::SubmitChainsRequest>,
    ) -> Result<Response<pb::SubmitChainsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut specs = convert::chain_specs(request.into_inner(), &self.limits)?;
        for spec in &mut specs {
            caller.claim(spec);
        }
        let traces: Vec<Option<String>> = specs.iter().map(spec_trace_id).collect();
        let submitted = self.handle.submit_many(specs).await?;
        for (s, trace_id) in submitted.iter().zip(&traces) {
            tracing::debug!(
                chain.id = %s.chain_id,
                trace_id = trace_id.as_deref().map(tracing::field::display),
                dedup = ?s.dedup,
                "chain submitted"
            );
        }
        Ok(Response::new(pb::SubmitChainsResponse {
            chains: submitted.into_iter().map(submitted_view).collect(),
        }))
    }

    async fn get_chain(
        &self,
        request: Request<pb::GetChainRequest>,
    ) -> Result<Response<pb::Chain>, Status> {
        let caller = Caller::of(&request)?;
        let id = convert::chain_id(&request.into_inner().chain_id)?;
        record_chain(id);
        let (chain, unserved) = self.handle.inspect(id).await?;
        caller.check_sees(&chain)?;
        Ok(Response::new(convert::inspected_view(&chain, unserved)))
    }

    async fn get_step_result(
        &self,
        request: Request<pb::GetStepResultRequest>,
    ) -> Result<Response<pb::GetStepResultResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = convert::chain_id(&request.chain_id)?;
        record_chain(id);
        self.check_sees(&caller, id).await?;
        let task_id = convert::task_id("task_id", &request.task_id)?;
        let result = self.handle.step_result(id, task_id).await?;
        Ok(Response::new(pb::GetStepResultResponse { result }))
    }

    type WatchChainStream = EventStream;

    async fn watch_chain(
        &self,
        request: Request<pb::WatchChainRequest>,
    ) -> Result<Response<Self::WatchChainStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = convert::chain_id(&request.into_inner().chain_id)?;
        record_chain(id);
        self.check_sees(&caller, id).await?;
        let feed = self
            .handle
            .watch(id, self.limits.watch_budget_bytes)
            .await?;
        // A watcher that fell behind ends with why, never with a plain end
        // of stream that would look like the chain ended.
        let stream = feed.map(|event| match event {
            Ok(e) => Ok(convert::event_view(&e)),
            Err(behind) => Err(Status::resource_exhausted(behind.to_string())),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_chain(
        &self,
        request: Request<pb::CancelChainRequest>,
    ) -> Result<Response<pb::CancelChainResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let id = convert::chain_id(&req.chain_id)?;
        record_chain(id);
        self.check_sees(&caller, id).await?;
        let state = self.handle.cancel(id, req.reason).await?;
        Ok(Response::new(pb::CancelChainResponse {
            state: state as i32,
        }))
    }
}

/// The trace id of a submission's W3C `traceparent` (checked already), for
/// the log lines about it.
fn spec_trace_id(spec: &crate::domain::ChainSpec) -> Option<String> {
    baton::trace::trace_id_of(
        spec.context
            .get(baton::trace::TRACEPARENT)
            .map(String::as_str),
    )
    .map(str::to_owned)
}

/// Records the chain a call is about in its span (see `request_span` in
/// lib.rs), so the call's log lines name it.
fn record_chain(chain_id: ChainId) {
    tracing::Span::current().record("chain.id", tracing::field::display(chain_id));
}

pub(crate) fn queue_view(q: scheduler::QueueStats) -> pb::QueueInfo {
    pb::QueueInfo {
        name: q.name,
        ready: q.ready,
        delayed: q.delayed,
        throttled: q.throttled,
        running: q.running,
        oldest_ready_age_ms: q.oldest_ready_age_ms,
        paused: q.paused,
        unserved_tasks: q.unserved,
        ready_by_priority: q.ready_by_priority.into_iter().collect(),
    }
}

pub(crate) fn worker_view(w: scheduler::WorkerStats) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.worker_id.to_string(),
        worker_name: w.name,
        queues: w.queues,
        task_names: w.task_names,
        concurrency: w.concurrency,
        in_flight: w.in_flight.into_iter().map(convert::pb_task_ref).collect(),
        draining: w.draining,
        connected_unix_ms: w.connected_ms,
        prefetch: w.prefetch,
    }
}

/// Most dead chains per page, and the page size when none is asked for.
const MAX_DEAD_PAGE: u32 = 1000;
const DEFAULT_DEAD_PAGE: u32 = 50;

/// Inspection and live limits.
pub struct AdminService {
    pub handle: Handle,
    /// What a schedule's chain may hold, as a submission.
    pub limits: Limits,
}

/// The identity an admin call names, checked.
fn identity_of(id: Option<pb::ThrottleIdentity>) -> Result<Identity, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument("identity is missing"))?;
    if id.key.is_empty() && id.task_name.is_empty() {
        return Err(Status::invalid_argument(
            "identity needs a task_name, a key, or both",
        ));
    }
    if !id.task_name.is_empty() {
        convert::check_name("identity.task_name", &id.task_name)?;
    }
    if id.key.chars().count() > convert::MAX_KEY_LEN {
        return Err(Status::invalid_argument(
            "identity.key is longer than 200 characters",
        ));
    }
    Ok(Identity {
        key: if id.key.is_empty() {
            "*".into()
        } else {
            id.key
        },
        task_name: id.task_name,
    })
}

/// `identity`'s entry of `all` (every identity after an admin change), or,
/// when it has no holders, waiters or admin setting any more, an empty one
/// that `set` fills with what the change did.
fn info_of(
    all: Vec<scheduler::ThrottleStats>,
    identity: &Identity,
    set: impl FnOnce(&mut pb::ThrottleInfo),
) -> pb::ThrottleInfo {
    let now = crate::domain::now_ms();
    all.into_iter()
        .find(|(i, ..)| i.identity == *identity)
        .map(|t| throttle_view(t, now))
        .unwrap_or_else(|| {
            let mut info = pb::ThrottleInfo {
                identity: Some(pb::ThrottleIdentity {
                    task_name: identity.task_name.clone(),
                    key: identity.key.clone(),
                }),
                ..Default::default()
            };
            set(&mut info);
            info
        })
}

/// The task id of a task or in-body holder (a chain's holds none).
fn holder_task(holder: &Holder) -> String {
    match holder {
        Holder::Task(t) | Holder::InBody { task_id: t, .. } => t.to_string(),
        Holder::Chain(_) => String::new(),
    }
}

pub(crate) fn throttle_view(
    (info, chains, waiting): scheduler::ThrottleStats,
    now: u64,
) -> pb::ThrottleInfo {
    pb::ThrottleInfo {
        identity: Some(pb::ThrottleIdentity {
            task_name: info.identity.task_name.clone(),
            key: info.identity.key.clone(),
        }),
        // A rate alone limits no holders: shown as 0.
        limit: if info.limit == throttle::UNLIMITED {
            0
        } else {
            info.limit
        },
        limit_overridden: info.overridden,
        rate: info.rate.map(|r| crate::domain::RateRecord::from(r).into()),
        rate_overridden: info.rate_overridden,
        holders: info
            .holders
            .iter()
            .zip(chains)
            .map(|((holder, h), chain_id)| pb::ThrottleHolder {
                kind: holder.kind().to_owned(),
                task_id: holder_task(holder),
                chain_id: chain_id.map(|c| c.to_string()).unwrap_or_default(),
                worker: h.worker.clone(),
                since_unix_ms: h.since,
            })
            .collect(),
        waiters: u64::try_from(info.waiters).unwrap_or(u64::MAX),
        oldest_waiter_age_ms: info.oldest_waiter.map_or(0, |t| now.saturating_sub(t)),
        first_waiters: info
            .first_waiters
            .iter()
            .zip(waiting)
            .map(|((holder, since), chain_id)| pb::ThrottleHolder {
                kind: holder.kind().to_owned(),
                task_id: holder_task(holder),
                chain_id: chain_id.map(|c| c.to_string()).unwrap_or_default(),
                worker: String::new(),
                since_unix_ms: *since,
            })
            .collect(),
    }
}

impl AdminService {
    /// One page of a listing: its chains and the next page's token.
    async fn list_page(
        &self,
        listing: crate::store::Listing,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<pb::Chain>, String), Status> {
        let size = match page_size {
            0 => DEFAULT_DEAD_PAGE,
            n => n.min(MAX_DEAD_PAGE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                crate::store::ListCursor::parse(listing, None, page_token).ok_or_else(|| {
                    Status::invalid_argument(
                        "page_token is not a token this broker handed out for this list",
                    )
                })?,
            )
        };
        let page = self
            .handle
            .chains(
                listing,
                None,
                after,
                usize::try_from(size).unwrap_or(usize::MAX),
            )
            .await?;
        Ok((
            page.chains.iter().map(convert::chain_view).collect(),
            page.next.unwrap_or_default(),
        ))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_queues(
        &self,
        _: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self
            .handle
            .queues()
            .await?
            .into_iter()
            .map(queue_view)
            .collect();
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self
            .handle
            .workers()
            .await?
            .into_iter()
            .map(worker_view)
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn list_throttles(
        &self,
        _: Request<pb::ListThrottlesRequest>,
    ) -> Result<Response<pb::ListThrottlesResponse>, Status> {
        let now = crate::domain::now_ms();
        let throttles = self
            .handle
            .throttles()
            .await?
            .into_iter()
            .map(|t| throttle_view(t, now))
            .collect();
        Ok(Response::new(pb::ListThrottlesResponse { throttles }))
    }

    async fn set_throttle_limit(
        &self,
        request: Request<pb::SetThrottleLimitRequest>,
    ) -> Result<Response<pb::ThrottleInfo>, Status> {
        let req = request.into_inner();
        let identity = identity_of(req.identity)?;
        let limit = (req.limit > 0).then_some(req.limit);
        let all = self.handle.set_limit(identity.clone(), limit).await?;
        Ok(Response::new(info_of(all, &identity, |info| {
            info.limit = limit.unwrap_or(1);
            info.limit_overridden = limit.is_some();
        })))
    }

    async fn set_throttle_rate(
        &self,
        request: Request<pb::SetThrottleRateRequest>,
    ) -> Result<Response<pb::ThrottleInfo>, Status> {
        let req = request.into_inner();
        let identity = identity_of(req.identity)?;
        if let Some(rate) = &req.rate {
            convert::check_rate("rate", rate)?;
        }
        let rate = req
            .rate
            .map(|r| Rate::from(&crate::domain::RateRecord::from(r)));
        let all = self.handle.set_rate(identity.clone(), rate).await?;
        Ok(Response::new(info_of(all, &identity, |info| {
            info.rate = req.rate;
            info.rate_overridden = rate.is_some();
        })))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let queue = request.into_inner().queue;
        convert::check_queue("queue", &queue)?;
        let stats = self.handle.pause_queue(queue, true).await?;
        Ok(Response::new(queue_view(stats)))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let queue = request.into_inner().queue;
        convert::check_queue("queue", &queue)?;
        let stats = self.handle.pause_queue(queue, false).await?;
        Ok(Response::new(queue_view(stats)))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let req = request.into_inner();
        convert::check_queue("queue", &req.queue)?;
        if req.reason.chars().count() > convert::MAX_KEY_LEN {
            return Err(Status::invalid_argument(format!(
                "reason is longer than {} characters",
                convert::MAX_KEY_LEN
            )));
        }
        let chain_ids = self.handle.purge_queue(req.queue, req.reason).await?;
        Ok(Response::new(pb::PurgeQueueResponse {
            cancelled: u64::try_from(chain_ids.len()).unwrap_or(u64::MAX),
            chain_ids: chain_ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_dead_chains(
        &self,
        request: Request<pb::ListDeadChainsRequest>,
    ) -> Result<Response<pb::ListDeadChainsResponse>, Status> {
        let req = request.into_inner();
        let (chains, next_page_token) = self
            .list_page(
                crate::store::Listing::Failed,
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListDeadChainsResponse {
            chains,
            next_page_token,
        }))
    }

    async fn list_chains(
        &self,
        request: Request<pb::ListChainsRequest>,
    ) -> Result<Response<pb::ListChainsResponse>, Status> {
        let req = request.into_inner();
        let listing = crate::domain::ChainState::try_from(req.state)
            .ok()
            .and_then(crate::store::Listing::of)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "state is {}: give CHAIN_STATE_RUNNING, CHAIN_STATE_SUCCEEDED, \
                     CHAIN_STATE_FAILED or CHAIN_STATE_CANCELLED",
                    req.state
                ))
            })?;
        let (chains, next_page_token) = self
            .list_page(listing, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListChainsResponse {
            chains,
            next_page_token,
        }))
    }

    async fn requeue_chain(
        &self,
        request: Request<pb::RequeueChainRequest>,
    ) -> Result<Response<pb::RequeueChainResponse>, Status> {
        let id = convert::chain_id(&request.into_inner().chain_id)?;
        record_chain(id);
        let new_id = self.handle.requeue(id).await?;
        tracing::info!(requeued_as = %new_id, "chain requeued");
        Ok(Response::new(pb::RequeueChainResponse {
            chain_id: new_id.to_string(),
            requeued_from: id.to_string(),
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let caller = Caller::of(&request)?;
        let schedule = request
            .into_inner()
            .schedule
            .ok_or_else(|| Status::invalid_argument("schedule is missing"))?;
        let mut record = convert::schedule(schedule, &self.limits)?;
        caller.claim_schedule(&mut record);
        let view = self.handle.put_schedule(record).await?;
        Ok(Response::new(convert::schedule_view(view)))
    }

    async fn list_schedules(
        &self,
        _: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let schedules = self
            .handle
            .schedules()
            .await?
            .into_iter()
            .map(convert::schedule_view)
            .collect();
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let req = request.into_inner();
        convert::check_schedule_name("name", &req.name)?;
        let view = self.handle.pause_schedule(req.name, req.paused).await?;
        Ok(Response::new(convert::schedule_view(view)))
    }

    async fn remove_schedule(
        &self,
        request: Request<pb::RemoveScheduleRequest>,
    ) -> Result<Response<pb::RemoveScheduleResponse>, Status> {
        let name = request.into_inner().name;
        convert::check_schedule_name("name", &name)?;
        self.handle.remove_schedule(name).await?;
        Ok(Response::new(pb::RemoveScheduleResponse {}))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let worker = request.into_inner().worker;
        convert::check_name("worker", &worker)?;
        let workers = self.handle.drain_workers(worker).await?;
        Ok(Response::new(pb::DrainWorkerResponse {
            workers: workers.into_iter().map(worker_view).collect(),
        }))
    }
}
