//! The Admin routes: queues, workers, throttles and dead chains, each a
//! call of [`api::AdminService`](crate::api::AdminService), so the checks
//! and messages are the gRPC ones. Role admin.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as Shared};
use baton::pb;
use baton::pb::admin_server::Admin as _;
use serde::{Deserialize, Serialize};

use super::State;
use super::broker::{parse, parse_required};
use super::caller::{AdminCaller, request};
use super::error::ApiError;
use super::json;

#[derive(Serialize)]
pub struct Queues {
    queues: Vec<json::Queue>,
}

/// `GET /api/v1/queues`: ListQueues.
pub async fn queues(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<Queues>, ApiError> {
    let answer = state
        .admin
        .list_queues(request(&caller, pb::ListQueuesRequest {}))
        .await?;
    Ok(Json(Queues {
        queues: answer
            .into_inner()
            .queues
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// `POST /api/v1/queues/{queue}/pause`: PauseQueue.
pub async fn pause(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(queue): Path<String>,
) -> Result<Json<json::Queue>, ApiError> {
    let answer = state
        .admin
        .pause_queue(request(&caller, pb::PauseQueueRequest { queue }))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

/// `POST /api/v1/queues/{queue}/resume`: ResumeQueue.
pub async fn resume(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(queue): Path<String>,
) -> Result<Json<json::Queue>, ApiError> {
    let answer = state
        .admin
        .resume_queue(request(&caller, pb::ResumeQueueRequest { queue }))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

#[derive(Serialize)]
pub struct Purged {
    cancelled: u64,
    chain_ids: Vec<String>,
}

/// `POST /api/v1/queues/{queue}/purge`: PurgeQueue (body `{"reason": ...}`,
/// optional).
pub async fn purge(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(queue): Path<String>,
    body: Bytes,
) -> Result<Json<Purged>, ApiError> {
    let body: json::Purge = parse(&body, true)?;
    let answer = state
        .admin
        .purge_queue(request(
            &caller,
            pb::PurgeQueueRequest {
                queue,
                reason: body.reason,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(Purged {
        cancelled: answer.cancelled,
        chain_ids: answer.chain_ids,
    }))
}

#[derive(Serialize)]
pub struct Workers {
    workers: Vec<json::Worker>,
}

/// `GET /api/v1/workers`: ListWorkers.
pub async fn workers(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<Workers>, ApiError> {
    let answer = state
        .admin
        .list_workers(request(&caller, pb::ListWorkersRequest {}))
        .await?;
    Ok(Json(Workers {
        workers: answer
            .into_inner()
            .workers
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// `POST /api/v1/workers/{worker}/drain`: DrainWorker (a worker name or id).
pub async fn drain(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(worker): Path<String>,
) -> Result<Json<Workers>, ApiError> {
    let answer = state
        .admin
        .drain_worker(request(&caller, pb::DrainWorkerRequest { worker }))
        .await?;
    Ok(Json(Workers {
        workers: answer
            .into_inner()
            .workers
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

#[derive(Serialize)]
pub struct Throttles {
    throttles: Vec<json::ThrottleInfo>,
}

/// `GET /api/v1/throttles`: ListThrottles.
pub async fn throttles(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<Throttles>, ApiError> {
    let answer = state
        .admin
        .list_throttles(request(&caller, pb::ListThrottlesRequest {}))
        .await?;
    Ok(Json(Throttles {
        throttles: answer
            .into_inner()
            .throttles
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// `PUT /api/v1/throttles/limit`: SetThrottleLimit (body
/// `{"identity": {"task_name": ..., "key": ...}, "limit": N}`; 0 clears).
pub async fn set_limit(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    body: Bytes,
) -> Result<Json<json::ThrottleInfo>, ApiError> {
    let body: json::SetLimit = parse_required(&body)?;
    let answer = state
        .admin
        .set_throttle_limit(request(
            &caller,
            pb::SetThrottleLimitRequest {
                identity: Some(pb::ThrottleIdentity {
                    task_name: body.identity.task_name,
                    key: body.identity.key,
                }),
                limit: body.limit,
            },
        ))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

/// `PUT /api/v1/throttles/rate`: SetThrottleRate (body
/// `{"identity": {...}, "rate": {"count": N, "period_ms": P, "burst": B}}`;
/// no rate clears the override).
pub async fn set_rate(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    body: Bytes,
) -> Result<Json<json::ThrottleInfo>, ApiError> {
    let body: json::SetRate = parse_required(&body)?;
    let answer = state
        .admin
        .set_throttle_rate(request(
            &caller,
            pb::SetThrottleRateRequest {
                identity: Some(pb::ThrottleIdentity {
                    task_name: body.identity.task_name,
                    key: body.identity.key,
                }),
                rate: body.rate.map(pb::Rate::from),
            },
        ))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

#[derive(Serialize)]
pub struct Schedules {
    schedules: Vec<json::ScheduleInfo>,
}

/// `GET /api/v1/schedules`: ListSchedules.
pub async fn schedules(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<Schedules>, ApiError> {
    let answer = state
        .admin
        .list_schedules(request(&caller, pb::ListSchedulesRequest {}))
        .await?;
    let schedules = answer.into_inner().schedules;
    Ok(Json(Schedules {
        schedules: schedules.into_iter().map(Into::into).collect(),
    }))
}

/// `PUT /api/v1/schedules`: PutSchedule (adds it, or replaces the one of
/// the same name).
pub async fn put_schedule(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    body: Bytes,
) -> Result<Json<json::ScheduleInfo>, ApiError> {
    let body: json::PutSchedule = parse_required(&body)?;
    let schedule = body.into_pb().map_err(ApiError::invalid)?;
    let answer = state
        .admin
        .put_schedule(request(
            &caller,
            pb::PutScheduleRequest {
                schedule: Some(schedule),
            },
        ))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

/// `POST /api/v1/schedules/{name}/pause` and `.../resume`: PauseSchedule.
async fn pause_schedule_as(
    state: &State,
    caller: &crate::auth::Caller,
    name: String,
    paused: bool,
) -> Result<Json<json::ScheduleInfo>, ApiError> {
    let answer = state
        .admin
        .pause_schedule(request(caller, pb::PauseScheduleRequest { name, paused }))
        .await?;
    Ok(Json(answer.into_inner().into()))
}

/// `POST /api/v1/schedules/{name}/pause`: PauseSchedule.
pub async fn pause_schedule(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<json::ScheduleInfo>, ApiError> {
    pause_schedule_as(&state, &caller, name, true).await
}

/// `POST /api/v1/schedules/{name}/resume`: PauseSchedule with paused false.
pub async fn resume_schedule(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<json::ScheduleInfo>, ApiError> {
    pause_schedule_as(&state, &caller, name, false).await
}

/// `DELETE /api/v1/schedules/{name}`: RemoveSchedule.
pub async fn remove_schedule(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .admin
        .remove_schedule(request(&caller, pb::RemoveScheduleRequest { name }))
        .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
}

/// As ListDeadChains: 50 by default, at most 1000.
const DEFAULT_DEAD_PAGE: u32 = 50;
const MAX_DEAD_PAGE: u32 = 1000;

#[derive(Serialize)]
pub struct DeadChains {
    chains: Vec<json::Chain>,
    next_page_token: String,
}

/// `GET /api/v1/dead`: ListDeadChains.
pub async fn dead(
    Shared(state): Shared<Arc<State>>,
    _: AdminCaller,
    query: Result<Query<DeadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadChains>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    // The store read ListDeadChains makes, read here to show each step's
    // arguments too (the proto's Chain has none).
    let size = match query.page_size.unwrap_or(0) {
        0 => DEFAULT_DEAD_PAGE,
        n => n.min(MAX_DEAD_PAGE),
    };
    let after = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(
            crate::store::ListCursor::parse(crate::store::Listing::Failed, None, token)
                .ok_or_else(|| {
                    ApiError::invalid("page_token is not a token this broker handed out")
                })?,
        ),
    };
    let page = state
        .handle
        .dead_chains(after, usize::try_from(size).unwrap_or(usize::MAX))
        .await?;
    let chains = page.chains.iter().map(json::Chain::of).collect();
    let answer = pb::ListDeadChainsResponse {
        chains: Vec::new(),
        next_page_token: page.next.unwrap_or_default(),
    };
    Ok(Json(DeadChains {
        chains,
        next_page_token: answer.next_page_token,
    }))
}

#[derive(Serialize)]
pub struct Requeued {
    chain_id: String,
    requeued_from: String,
}

/// `POST /api/v1/chains/{id}/requeue`: RequeueChain.
pub async fn requeue(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    Path(chain_id): Path<String>,
) -> Result<Json<Requeued>, ApiError> {
    let answer = state
        .admin
        .requeue_chain(request(&caller, pb::RequeueChainRequest { chain_id }))
        .await?
        .into_inner();
    Ok(Json(Requeued {
        chain_id: answer.chain_id,
        requeued_from: answer.requeued_from,
    }))
}

/// The outcome of one chain of a requeue of many.
#[derive(Serialize)]
pub struct RequeueOutcome {
    requeued_from: String,
    /// The new chain's id; empty when `error` is set.
    chain_id: String,
    error: Option<ApiError>,
}

#[derive(Serialize)]
pub struct RequeuedMany {
    chains: Vec<RequeueOutcome>,
}

/// Most chains one requeue-many request takes.
const MAX_REQUEUE: usize = 1000;

/// `POST /api/v1/dead/requeue`: RequeueChain for each of `chain_ids`, one
/// after another; each answered on its own (one failing stops no other).
pub async fn requeue_many(
    Shared(state): Shared<Arc<State>>,
    AdminCaller(caller): AdminCaller,
    body: Bytes,
) -> Result<Json<RequeuedMany>, ApiError> {
    let body: json::RequeueMany = parse_required(&body)?;
    if body.chain_ids.len() > MAX_REQUEUE {
        return Err(ApiError::invalid(format!(
            "chain_ids has {} ids, more than {MAX_REQUEUE}",
            body.chain_ids.len()
        )));
    }
    let mut chains = Vec::with_capacity(body.chain_ids.len());
    for chain_id in body.chain_ids {
        let answer = state
            .admin
            .requeue_chain(request(
                &caller,
                pb::RequeueChainRequest {
                    chain_id: chain_id.clone(),
                },
            ))
            .await;
        chains.push(match answer {
            Ok(a) => RequeueOutcome {
                requeued_from: chain_id,
                chain_id: a.into_inner().chain_id,
                error: None,
            },
            Err(status) => RequeueOutcome {
                requeued_from: chain_id,
                chain_id: String::new(),
                error: Some(status.into()),
            },
        });
    }
    Ok(Json(RequeuedMany { chains }))
}
