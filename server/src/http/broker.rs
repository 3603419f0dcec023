//! The Broker routes: submit, get, watch (server-sent events), cancel, and
//! the chain list and search the dashboard's Chains page uses.
//!
//! Submit, step results and cancel call [`BrokerService`](crate::api::BrokerService) itself;
//! get and watch call the same scheduler requests with the same ownership
//! check, to add each step's arguments, which the proto's `Step` lacks.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as Shared};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use baton::pb;
use baton::pb::broker_server::Broker as _;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use super::State;
use super::caller::{BrokerCaller, request};
use super::error::ApiError;
use super::json;
use crate::api::convert;
use crate::auth::Caller;
use crate::domain::ChainId;

/// Reads a JSON body; an empty one is `T::default()` when `optional`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming what serde could not read.
pub fn parse<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
    optional: bool,
) -> Result<T, ApiError> {
    if optional && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

/// Reads a JSON body that must be there.
///
/// # Errors
/// `INVALID_ARGUMENT` naming what serde could not read.
pub fn parse_required<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

/// `POST /api/v1/chains`: SubmitChain.
pub async fn submit(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    body: Bytes,
) -> Result<Json<json::Submitted>, ApiError> {
    let body: json::SubmitChain = parse_required(&body)?;
    let req = body.into_pb().map_err(ApiError::invalid)?;
    let answer = state.broker.submit_chain(request(&caller, req)).await?;
    Ok(Json(answer.into_inner().into()))
}

#[derive(Serialize)]
pub struct SubmittedMany {
    chains: Vec<json::Submitted>,
}

/// `POST /api/v1/chains/batch`: SubmitChains.
pub async fn submit_many(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    body: Bytes,
) -> Result<Json<SubmittedMany>, ApiError> {
    let body: json::SubmitChains = parse_required(&body)?;
    let chains = body
        .chains
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.into_pb().map_err(|m| format!("chains[{i}].{m}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::invalid)?;
    let answer = state
        .broker
        .submit_chains(request(&caller, pb::SubmitChainsRequest { chains }))
        .await?;
    Ok(Json(SubmittedMany {
        chains: answer
            .into_inner()
            .chains
            .into_iter()
            .map(Into::into)
            .collect(),
    }))
}

/// `GET /api/v1/chains/{id}`: GetChain, with each step's arguments.
pub async fn get(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    Path(id): Path<String>,
) -> Result<Json<json::Chain>, ApiError> {
    let id = convert::chain_id(&id)?;
    let (record, unserved) = state.handle.inspect(id).await?;
    caller.check_sees(&record)?;
    let view = convert::inspected_view(&record, unserved);
    Ok(Json(json::Chain::new(view, &record)))
}

#[derive(Serialize)]
pub struct StepResult {
    result: serde_json::Value,
}

/// `GET /api/v1/chains/{id}/results/{task_id}`: GetStepResult.
pub async fn step_result(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    Path((chain_id, task_id)): Path<(String, String)>,
) -> Result<Json<StepResult>, ApiError> {
    let answer = state
        .broker
        .get_step_result(request(
            &caller,
            pb::GetStepResultRequest { chain_id, task_id },
        ))
        .await?;
    Ok(Json(StepResult {
        result: json::value(&answer.into_inner().result),
    }))
}

/// `GET /api/v1/chains/{id}/events`: WatchChain as server-sent events.
/// Each event is named by its kind (`snapshot` first, then `step_started`
/// and so on) and carries a [`json::Event`]; the stream ends after the
/// event that ends the chain. A watcher that fell behind gets an `error`
/// event (`RESOURCE_EXHAUSTED`, the gRPC message) and the end.
pub async fn events(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = convert::chain_id(&id)?;
    check_sees(&state, &caller, id).await?;
    let feed = state
        .handle
        .watch(id, state.broker.limits.watch_budget_bytes)
        .await?;
    let stream = feed.map(|item| {
        let event = match item {
            Ok(e) => SseEvent::default()
                .event(e.kind)
                .json_data(json::Event::of(&e)),
            Err(behind) => SseEvent::default().event("error").json_data(ApiError::new(
                tonic::Code::ResourceExhausted,
                behind.to_string(),
            )),
        };
        Ok(event.unwrap_or_else(|_| SseEvent::default().event("error")))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn check_sees(state: &State, caller: &Caller, id: ChainId) -> Result<(), ApiError> {
    if caller.sees_all() {
        return Ok(());
    }
    caller.check_sees(&state.handle.get(id).await?)?;
    Ok(())
}

#[derive(Serialize)]
pub struct Cancelled {
    state: &'static str,
}

/// `POST /api/v1/chains/{id}/cancel`: CancelChain (body `{"reason": ...}`,
/// optional).
pub async fn cancel(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    Path(chain_id): Path<String>,
    body: Bytes,
) -> Result<Json<Cancelled>, ApiError> {
    let body: json::Cancel = parse(&body, true)?;
    let answer = state
        .broker
        .cancel_chain(request(
            &caller,
            pb::CancelChainRequest {
                chain_id,
                reason: body.reason,
            },
        ))
        .await?;
    Ok(Json(Cancelled {
        state: json::chain_state(answer.into_inner().state),
    }))
}

/// What the chain list shows of a chain.
#[derive(Serialize, Debug)]
pub struct Summary {
    pub chain_id: String,
    pub state: &'static str,
    /// Task names of the main steps, in order.
    pub tasks: Vec<String>,
    /// Queues the steps were routed to so far, without repeats.
    pub queues: Vec<String>,
    pub created_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub failure: Option<json::Failure>,
    pub requeued_from: String,
    pub requeued_as: String,
}

impl Summary {
    fn of(c: &crate::domain::ChainRecord) -> Self {
        let mut queues: Vec<String> = Vec::new();
        for s in c.steps.iter().chain(&c.on_success).chain(&c.on_failure) {
            if !s.queue.is_empty() && !queues.contains(&s.queue) {
                queues.push(s.queue.clone());
            }
        }
        Summary {
            chain_id: c.id.clone(),
            state: json::chain_state(c.state),
            tasks: c.steps.iter().map(|s| s.signature().name.clone()).collect(),
            queues,
            created_unix_ms: c.created_ms,
            finished_unix_ms: c.finished_ms,
            failure: c.failure.clone().map(|mut f| {
                // The list shows the message; the traceback is on the chain.
                f.traceback.clear();
                json::Failure::from(baton::pb::FailureRecord::from(f))
            }),
            requeued_from: c.requeued_from.clone(),
            requeued_as: c.requeued_as.clone(),
        }
    }

    fn matches(c: &crate::domain::ChainRecord, filter: &ListQuery) -> bool {
        let steps = || c.steps.iter().chain(&c.on_success).chain(&c.on_failure);
        filter
            .task
            .as_deref()
            .is_none_or(|t| t.is_empty() || steps().any(|s| s.signature().name == t))
            && filter
                .queue
                .as_deref()
                .is_none_or(|q| q.is_empty() || steps().any(|s| s.queue == q))
            && filter.since_unix_ms.is_none_or(|t| c.created_ms >= t)
            && filter.until_unix_ms.is_none_or(|t| c.created_ms < t)
    }
}

/// The query of `GET /api/v1/chains`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A chain id, or an idempotency key: finds that one chain.
    pub q: Option<String>,
    /// `CHAIN_STATE_FAILED` (the default): failed chains not requeued,
    /// newest failure first; `CHAIN_STATE_SUCCEEDED`, `_CANCELLED`: by
    /// when they ended; `CHAIN_STATE_RUNNING`: newest first.
    pub state: Option<String>,
    /// Only chains with a step of this task name (ended chains: from the
    /// store's task index).
    pub task: Option<String>,
    /// Only chains with a step routed to this queue.
    pub queue: Option<String>,
    /// Only chains created at or after this time (unix ms).
    pub since_unix_ms: Option<u64>,
    /// Only chains created before this time (unix ms).
    pub until_unix_ms: Option<u64>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Serialize, Debug, Default)]
pub struct ChainPage {
    pub chains: Vec<Summary>,
    /// Pass as `page_token` for the next page; empty after the last.
    pub next_page_token: String,
    /// Chains read to fill this page (filters skip some).
    pub scanned: usize,
}

/// Most chains per page of the list; its default.
const MAX_PAGE: u32 = 200;
const DEFAULT_PAGE: u32 = 50;
/// Most records one list request reads while filtering: a page may come
/// back short (with a next token) rather than make one request slow.
const MAX_SCAN: usize = 5000;

/// `GET /api/v1/chains`: search by id or idempotency key (`q`), or list
/// the chains of a state, newest first, filtered by task name, queue and
/// creation time.
pub async fn list(
    Shared(state): Shared<Arc<State>>,
    BrokerCaller(caller): BrokerCaller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ChainPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    if let Some(q) = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        return search(&state, &caller, q).await.map(Json);
    }
    let wanted = query.state.as_deref().unwrap_or("CHAIN_STATE_FAILED");
    let listing = pb::ChainState::from_str_name(wanted)
        .and_then(|s| {
            crate::store::Listing::of(crate::domain::ChainState::try_from(s as i32).ok()?)
        })
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "state is {wanted:?}, not one of CHAIN_STATE_RUNNING, CHAIN_STATE_SUCCEEDED, \
                 CHAIN_STATE_FAILED, CHAIN_STATE_CANCELLED"
            ))
        })?;
    // Lists are Admin calls in gRPC: clients find their own chains by id
    // or key.
    if !caller.sees_all() {
        return Err(ApiError::new(
            tonic::Code::PermissionDenied,
            format!(
                "token {:?} has role {}; listing chains needs role admin \
                 (find your chains by id or idempotency key: q=...)",
                caller.name, caller.role
            ),
        ));
    }
    let size = match query.page_size {
        None | Some(0) => DEFAULT_PAGE,
        Some(n) => n.min(MAX_PAGE),
    } as usize;
    // A task name of an ended list is read from the store's task index;
    // the running list (and every other filter) is filtered as it is read.
    let task = query.task.as_deref().filter(|t| !t.is_empty());
    let cursor = |token: &str| crate::store::ListCursor::parse(listing, task, token);
    let mut after = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => Some(cursor(token).ok_or_else(|| {
            ApiError::invalid("page_token is not a token this broker handed out for this list")
        })?),
    };
    let mut page = ChainPage::default();
    loop {
        let want = size - page.chains.len();
        let owned = task.map(str::to_owned);
        let dead = state
            .handle
            .chains(listing, owned, after.take(), want)
            .await?;
        page.scanned += dead.chains.len();
        page.chains.extend(
            dead.chains
                .iter()
                .filter(|c| Summary::matches(c, &query))
                .map(Summary::of),
        );
        // Ended lists go from the latest end back, and a chain ends after
        // it was created: past an end before `since_unix_ms`, nothing
        // further can match.
        let past_since = listing != crate::store::Listing::Running
            && query
                .since_unix_ms
                .zip(dead.chains.last())
                .is_some_and(|(since, c)| c.finished_ms < since);
        match dead.next {
            None => break,
            Some(_) if past_since => break,
            Some(next) if page.chains.len() >= size || page.scanned >= MAX_SCAN => {
                page.next_page_token = next;
                break;
            }
            Some(next) => after = cursor(&next),
        }
    }
    Ok(Json(page))
}

/// One chain by id, or by idempotency key (a client's keys are scoped to
/// its token, as at submission).
async fn search(state: &State, caller: &Caller, q: &str) -> Result<ChainPage, ApiError> {
    let mut page = ChainPage::default();
    let ids = match convert::chain_id(q) {
        Ok(id) => vec![id],
        Err(_) => {
            // Keys are stored as submitted with authentication off, and
            // scoped as "<token name>:<key>" with it; an admin also finds
            // a key given with its scope.
            let mut keys = Vec::new();
            if !caller.name.is_empty() {
                keys.push(format!("{}:{q}", caller.name));
            }
            if caller.sees_all() {
                keys.push(q.to_owned());
            }
            let store = state.store.clone();
            let found = tokio::task::spawn_blocking(move || {
                keys.iter()
                    .map(|k| store.idempotent_chain(k))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| ApiError::new(tonic::Code::Internal, e.to_string()))?
            .map_err(|e| {
                tracing::error!(cause = %e, "idempotency index read failed");
                ApiError::new(
                    tonic::Code::Unavailable,
                    "the broker's store is failing; retry later",
                )
            })?;
            let mut ids: Vec<ChainId> = Vec::new();
            for id in found.into_iter().flatten() {
                let Ok(id) = ChainId::parse(&id) else {
                    continue;
                };
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids
        }
    };
    for id in ids {
        match state.handle.get(id).await {
            Ok(chain) if caller.check_sees(&chain).is_ok() => {
                page.scanned += 1;
                page.chains.push(Summary::of(&chain));
            }
            Ok(_) | Err(crate::scheduler::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(page)
}
