//! How the CLI prints: aligned tables and short human forms for people,
//! JSON objects for scripts. The JSON forms follow the proto's field names
//! (snake_case), with enum values as lower-case names (`"failed"`), JSON
//! payloads (results, arguments) embedded as JSON rather than as strings,
//! and times as unix milliseconds.

use baton::pb;
use serde_json::{Value, json};

/// Left-aligned columns separated by two spaces; the last column is not
/// padded. Empty cells print as `-`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell(c).chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            text.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.iter().map(|c| cell(c)).collect());
    }
    out
}

/// The width the tables are made to fit (a terminal of 100 columns).
pub const WIDTH: usize = 100;

/// An id shortened for a table: its last 12 characters after `…`. Ids are
/// UUIDv7, whose first characters are the time they were made, so those
/// made together differ at the end. `--json` prints them whole.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 13 {
        return id.to_owned();
    }
    let tail: String = chars[chars.len() - 12..].iter().collect();
    format!("…{tail}")
}

/// `text` cut to `max` characters in its middle, so that both ends stay:
/// a throttle identity's task name and the end of its key.
pub fn elide_middle(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max || max < 3 {
        return text.to_owned();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// `label` then `items` separated by `, `, wrapped to [`WIDTH`] columns
/// with the continuation lines indented under the first item; an item is
/// never cut.
pub fn wrap_list(label: &str, items: &[String]) -> String {
    let indent = label.chars().count();
    let mut out = label.to_owned();
    let mut column = indent;
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{item},")
        } else {
            item.clone()
        };
        let len = piece.chars().count();
        if i > 0 {
            if column + 1 + len > WIDTH {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent));
                column = indent;
            } else {
                out.push(' ');
                column += 1;
            }
        }
        out.push_str(&piece);
        column += len;
    }
    out.push('\n');
    out
}

/// Prints a JSON value on one line.
pub fn print_json(value: &Value) {
    println!("{value}");
}

/// The lower-case name of a proto enum value: `CHAIN_STATE_FAILED` with
/// prefix `CHAIN_STATE_` gives `failed`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix).to_lowercase()
}

pub fn chain_state(state: i32) -> String {
    let s = pb::ChainState::try_from(state).unwrap_or_default();
    enum_name(s.as_str_name(), "CHAIN_STATE_")
}

pub fn step_state(state: i32) -> String {
    let s = pb::StepState::try_from(state).unwrap_or_default();
    enum_name(s.as_str_name(), "STEP_STATE_")
}

pub fn phase(phase: i32) -> String {
    let p = pb::Phase::try_from(phase).unwrap_or_default();
    enum_name(p.as_str_name(), "PHASE_")
}

/// A JSON text as a value (text that is not JSON stays a string; empty is
/// null).
fn embedded(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub fn failure_json(f: &pb::FailureRecord) -> Value {
    json!({
        "chain_id": f.chain_id,
        "phase": phase(f.phase),
        "step_index": f.step_index,
        "task_name": f.task_name,
        "task_id": f.task_id,
        "attempt": f.attempt,
        "error_type": f.error_type,
        "message": f.message,
        "traceback": f.traceback,
    })
}

fn step_json(s: &pb::Step) -> Value {
    json!({
        "task_id": s.task_id,
        "phase": phase(s.phase),
        "index": s.index,
        "name": s.name,
        "state": step_state(s.state),
        "attempts": s.attempts,
        "polls": s.polls,
        "retries": s.retries,
        "queue": s.queue,
        "result": embedded(&s.result),
        "failure": s.failure.as_ref().map(failure_json),
        "worker": s.worker,
        "ready_unix_ms": s.ready_unix_ms,
        "started_unix_ms": s.started_unix_ms,
        "finished_unix_ms": s.finished_unix_ms,
        "description": s.description,
        "unserved_queue": s.unserved_queue,
        "members": s.members,
        "members_succeeded": s.members_succeeded,
        "child_chain_ids": s.child_chain_ids,
    })
}

pub fn chain_json(c: &pb::Chain) -> Value {
    let steps = |steps: &[pb::Step]| steps.iter().map(step_json).collect::<Vec<_>>();
    json!({
        "chain_id": c.chain_id,
        "state": chain_state(c.state),
        "steps": steps(&c.steps),
        "on_success": steps(&c.on_success),
        "on_failure": steps(&c.on_failure),
        "context": c.context,
        "heavy": c.heavy,
        "created_unix_ms": c.created_unix_ms,
        "finished_unix_ms": c.finished_unix_ms,
        "deadline_unix_ms": c.deadline_unix_ms,
        "result": embedded(&c.result),
        "failure": c.failure.as_ref().map(failure_json),
        "cancel_reason": c.cancel_reason,
        "requeued_from": c.requeued_from,
        "requeued_as": c.requeued_as,
        "parent_chain_id": c.parent_chain_id,
        "member_index": c.member_index,
        "history": c.history.iter().map(history_json).collect::<Vec<_>>(),
        "history_dropped": c.history_dropped,
    })
}

fn history_json(e: &pb::HistoryEntry) -> Value {
    json!({
        "kind": e.kind,
        "at_unix_ms": e.at_unix_ms,
        "phase": phase(e.phase),
        "step_index": e.step_index,
        "attempt": e.attempt,
        "worker": e.worker,
        "detail": e.detail,
        "next_unix_ms": e.next_unix_ms,
        "repeats": e.repeats,
    })
}

pub fn event_json(e: &pb::ChainEvent) -> Value {
    let chain = e.chain.as_ref();
    json!({
        "kind": e.kind,
        "phase": phase(e.phase),
        "step_index": e.step_index,
        "chain_id": chain.map(|c| c.chain_id.clone()),
        "state": chain.map(|c| chain_state(c.state)),
        "chain": chain.map(chain_json),
    })
}

pub fn queue_json(q: &pb::QueueInfo) -> Value {
    json!({
        "name": q.name,
        "ready": q.ready,
        "delayed": q.delayed,
        "throttled": q.throttled,
        "running": q.running,
        "oldest_ready_age_ms": q.oldest_ready_age_ms,
        "paused": q.paused,
        "unserved_tasks": q.unserved_tasks,
        "ready_by_priority": q
            .ready_by_priority
            .iter()
            .map(|(p, n)| (p.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// A queue's ready tasks by priority, highest first: `9:2 0:40`.
pub fn by_priority(q: &pb::QueueInfo) -> String {
    let mut counts: Vec<(&i32, &u64)> = q.ready_by_priority.iter().collect();
    counts.sort_by(|a, b| b.0.cmp(a.0));
    counts
        .iter()
        .map(|(p, n)| format!("{p}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why waiting work does not start: no connected worker registered its
/// task name for its queue.
pub fn unserved(name: &str, queue: &str) -> String {
    format!("no connected worker runs {name} (queue {queue})")
}

/// One [`unserved`] line per task name the queues wait for in vain.
pub fn unserved_in_queues(queues: &[pb::QueueInfo]) -> Vec<String> {
    queues
        .iter()
        .flat_map(|q| q.unserved_tasks.iter().map(|name| unserved(name, &q.name)))
        .collect()
}

/// One [`unserved`] line per step of the chain that waits for a task name
/// no connected worker runs (GetChain's `unserved_queue`).
pub fn unserved_steps(c: &pb::Chain) -> Vec<String> {
    c.steps
        .iter()
        .chain(&c.on_success)
        .chain(&c.on_failure)
        .filter(|s| !s.unserved_queue.is_empty())
        .map(|s| unserved(&s.name, &s.unserved_queue))
        .collect()
}

pub fn worker_json(w: &pb::WorkerInfo) -> Value {
    json!({
        "worker_id": w.worker_id,
        "worker_name": w.worker_name,
        "queues": w.queues,
        "task_names": w.task_names,
        "concurrency": w.concurrency,
        "in_flight": w.in_flight.iter().map(|t| json!({"task_id": t.task_id, "attempt": t.attempt})).collect::<Vec<_>>(),
        "draining": w.draining,
        "connected_unix_ms": w.connected_unix_ms,
    })
}

/// A rate as it is written (`10/s`, `3/10s`, with its burst when more
/// than 1); `-` for none.
pub fn rate(rate: Option<&pb::Rate>) -> String {
    let Some(r) = rate else {
        return "-".to_owned();
    };
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
        (1, "ms"),
    ];
    let (size, unit) = units
        .into_iter()
        .find(|(size, _)| r.period_ms % size == 0)
        .unwrap_or((1, "ms"));
    let number = r.period_ms / size;
    let period = if number == 1 {
        unit.to_owned()
    } else {
        format!("{number}{unit}")
    };
    let burst = if r.burst > 1 {
        format!(" burst {}", r.burst)
    } else {
        String::new()
    };
    format!("{}/{period}{burst}", r.count)
}

pub fn throttle_json(t: &pb::ThrottleInfo) -> Value {
    let identity = t.identity.clone().unwrap_or_default();
    json!({
        "task_name": identity.task_name,
        "key": identity.key,
        "limit": t.limit,
        "limit_overridden": t.limit_overridden,
        "rate": t.rate.map(|r| json!({"count": r.count, "period_ms": r.period_ms, "burst": r.burst.max(1)})),
        "rate_overridden": t.rate_overridden,
        "holders": t.holders.iter().map(|h| json!({
            "kind": h.kind,
            "task_id": h.task_id,
            "chain_id": h.chain_id,
            "worker": h.worker,
            "since_unix_ms": h.since_unix_ms,
        })).collect::<Vec<_>>(),
        "waiters": t.waiters,
        "oldest_waiter_age_ms": t.oldest_waiter_age_ms,
    })
}

/// A throttle identity as people write it: `task[key]`, or `key K` for a
/// shared key.
pub fn identity(i: Option<&pb::ThrottleIdentity>) -> String {
    match i {
        None => String::new(),
        Some(i) if i.task_name.is_empty() => format!("key {}", i.key),
        Some(i) => format!("{}[{}]", i.task_name, i.key),
    }
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `4m05s`, `2h10m`,
/// `3d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long ago `unix_ms` was (empty for 0: never).
pub fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return String::new();
    }
    format!("{} ago", duration(now_ms().saturating_sub(unix_ms)))
}

pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A unix time in milliseconds as UTC RFC 3339 (`2025-03-01T12:00:00.123Z`);
/// empty for 0.
pub fn timestamp(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return String::new();
    }
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Text cut to `max` characters, with `…` when cut; newlines become spaces.
pub fn short(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A failure in one line: `Type: message (main[1] name, attempt 2)`.
pub fn failure_line(f: &pb::FailureRecord) -> String {
    format!(
        "{}: {} ({}[{}] {}, attempt {})",
        f.error_type,
        short(&f.message, 200),
        phase(f.phase),
        f.step_index,
        f.task_name,
        f.attempt
    )
}

/// Lines of a traceback shown whole; a longer one keeps its first and last.
const TRACEBACK_HEAD: usize = 30;
const TRACEBACK_TAIL: usize = 10;

/// A traceback for the chain's header, each line under the first indented
/// to the value column. Shown whole, because which frame matters depends on
/// the language: Python's last lines name the error and the innermost
/// frame, while a Node, Go or Rust trace starts with the error and the
/// frame that raised it. A longer one keeps its first [`TRACEBACK_HEAD`]
/// and last [`TRACEBACK_TAIL`] lines, with how many were left out between.
/// Each line is cut to 200 characters, control characters blanked.
fn traceback(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut shown: Vec<String> = Vec::new();
    if lines.len() <= TRACEBACK_HEAD + TRACEBACK_TAIL {
        shown.extend(lines.iter().map(|l| short(l, 200)));
    } else {
        shown.extend(lines[..TRACEBACK_HEAD].iter().map(|l| short(l, 200)));
        let left_out = lines.len() - TRACEBACK_HEAD - TRACEBACK_TAIL;
        shown.push(format!("… {left_out} more lines …"));
        let tail = &lines[lines.len() - TRACEBACK_TAIL..];
        shown.extend(tail.iter().map(|l| short(l, 200)));
    }
    shown.join(&format!("\n{:14}", ""))
}

/// A chain for people: a header, then one row per step.
pub fn chain_text(c: &pb::Chain) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("{name:<14}{value}\n"));
        }
    };
    field("chain", c.chain_id.clone());
    field("state", chain_state(c.state));
    field("created", timestamp(c.created_unix_ms));
    if c.finished_unix_ms > 0 {
        field(
            "finished",
            format!(
                "{} (after {})",
                timestamp(c.finished_unix_ms),
                duration(c.finished_unix_ms.saturating_sub(c.created_unix_ms))
            ),
        );
    }
    field("deadline", timestamp(c.deadline_unix_ms));
    if c.heavy {
        field("heavy", "yes".into());
    }
    let mut context: Vec<String> = c.context.iter().map(|(k, v)| format!("{k}={v}")).collect();
    context.sort();
    field("context", context.join(" "));
    if c.state == pb::ChainState::Succeeded as i32 {
        field("result", short(&c.result, 200));
    }
    if let Some(f) = &c.failure {
        field("failure", failure_line(f));
        field("traceback", traceback(&f.traceback));
    }
    field("cancel reason", c.cancel_reason.clone());
    field("requeued from", c.requeued_from.clone());
    field("requeued as", c.requeued_as.clone());
    if !c.parent_chain_id.is_empty() {
        field(
            "parent",
            format!("{} (member {})", c.parent_chain_id, c.member_index),
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = c
        .steps
        .iter()
        .chain(&c.on_success)
        .chain(&c.on_failure)
        .map(|s| {
            let outcome = match (&s.failure, s.state) {
                (Some(f), state) if state != pb::StepState::Succeeded as i32 => {
                    format!("{}: {}", f.error_type, short(&f.message, 60))
                }
                _ if s.members > 0 && s.state != pb::StepState::Succeeded as i32 => {
                    format!("{} of {} members succeeded", s.members_succeeded, s.members)
                }
                _ => short(&s.result, 60),
            };
            vec![
                phase(s.phase),
                s.index.to_string(),
                s.name.clone(),
                step_state(s.state),
                s.attempts.to_string(),
                s.queue.clone(),
                s.worker.clone(),
                outcome,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PHASE",
            "#",
            "TASK",
            "STATE",
            "ATTEMPTS",
            "QUEUE",
            "WORKER",
            "RESULT / ERROR",
        ],
        &rows,
    ));
    for line in unserved_steps(c) {
        out.push_str(&format!("\n{line}: the step waits until one connects\n"));
    }
    out.push_str("\nHistory:\n");
    out.push_str(&history_table(c));
    out
}

/// The chain's history, oldest first: its submission, then each entry.
fn history_table(c: &pb::Chain) -> String {
    let step_name = |e: &pb::HistoryEntry| {
        let steps = match pb::Phase::try_from(e.phase) {
            Ok(pb::Phase::Main) => &c.steps,
            Ok(pb::Phase::OnSuccess) => &c.on_success,
            Ok(pb::Phase::OnFailure) => &c.on_failure,
            _ => return String::new(),
        };
        let name = usize::try_from(e.step_index)
            .ok()
            .and_then(|i| steps.get(i))
            .map_or("?", |s| s.name.as_str());
        format!("{} #{} {name}", phase(e.phase), e.step_index)
    };
    let mut rows = vec![vec![
        timestamp(c.created_unix_ms),
        "submitted".into(),
        String::new(),
        String::new(),
        String::new(),
        if c.requeued_from.is_empty() {
            String::new()
        } else {
            format!("requeue of {}", c.requeued_from)
        },
    ]];
    if c.history_dropped > 0 {
        let note = format!(
            "{} retries, polls or lost runs in the middle not kept",
            c.history_dropped
        );
        let mut row = vec![String::new(); 6];
        row[1] = note;
        rows.push(row);
    }
    for e in &c.history {
        let mut detail = e.detail.clone();
        if e.repeats > 0 {
            detail = format!("{} polls, the last: {detail}", e.repeats + 1);
        }
        if e.next_unix_ms > 0 {
            detail = format!("{detail} (due again {})", timestamp(e.next_unix_ms));
        }
        rows.push(vec![
            timestamp(e.at_unix_ms),
            e.kind.clone(),
            step_name(e),
            if e.attempt > 0 {
                e.attempt.to_string()
            } else {
                String::new()
            },
            e.worker.clone(),
            short(detail.trim(), 80),
        ]);
    }
    table(
        &["TIME", "EVENT", "STEP", "ATTEMPT", "WORKER", "DETAIL"],
        &rows,
    )
}

/// One event for people: what happened, to which step.
pub fn event_line(e: &pb::ChainEvent) -> String {
    let Some(chain) = e.chain.as_ref() else {
        return e.kind.clone();
    };
    let steps = match e.phase {
        p if p == pb::Phase::OnSuccess as i32 => &chain.on_success,
        p if p == pb::Phase::OnFailure as i32 => &chain.on_failure,
        _ => &chain.steps,
    };
    let step = usize::try_from(e.step_index)
        .ok()
        .and_then(|i| steps.get(i));
    let at = |s: &pb::Step| format!("{}[{}] {}", phase(s.phase), s.index, s.name);
    match (e.kind.as_str(), step) {
        ("snapshot", _) => {
            let current = chain
                .steps
                .iter()
                .chain(&chain.on_success)
                .chain(&chain.on_failure)
                .find(|s| {
                    !matches!(
                        pb::StepState::try_from(s.state).unwrap_or_default(),
                        pb::StepState::Pending | pb::StepState::Succeeded
                    )
                });
            match current {
                Some(s) if chain.state == pb::ChainState::Running as i32 => format!(
                    "chain {} is running: {} is {}",
                    chain.chain_id,
                    at(s),
                    step_state(s.state)
                ),
                _ => {
                    let ended = match pb::ChainState::try_from(chain.state).unwrap_or_default() {
                        pb::ChainState::Succeeded => "chain_succeeded",
                        pb::ChainState::Failed => "chain_failed",
                        pb::ChainState::Cancelled => "chain_cancelled",
                        _ => {
                            return format!(
                                "chain {} is {}",
                                chain.chain_id,
                                chain_state(chain.state)
                            );
                        }
                    };
                    let event = pb::ChainEvent {
                        kind: ended.to_owned(),
                        ..e.clone()
                    };
                    event_line(&event)
                }
            }
        }
        ("chain_succeeded", _) => format!("chain succeeded: result {}", short(&chain.result, 120)),
        ("chain_failed", _) => match &chain.failure {
            Some(f) => format!("chain failed: {}", failure_line(f)),
            None => "chain failed".to_owned(),
        },
        ("chain_cancelled", _) => format!("chain cancelled: {}", chain.cancel_reason),
        (kind, Some(s)) => {
            let detail = match kind {
                "step_started" => format!("attempt {} on {}", s.attempts, s.worker),
                "step_succeeded" => format!("result {}", short(&s.result, 120)),
                "step_retrying" => match &s.failure {
                    Some(f) => format!(
                        "retry {} after {}: {}",
                        s.retries,
                        f.error_type,
                        short(&f.message, 120)
                    ),
                    None => format!("retry {}", s.retries),
                },
                "step_failed" => s
                    .failure
                    .as_ref()
                    .map(|f| format!("{}: {}", f.error_type, short(&f.message, 120)))
                    .unwrap_or_default(),
                "step_polling" => format!("poll {}, not done yet", s.polls),
                "step_lost" => "run lost (lease lapsed); back in its queue".to_owned(),
                _ => step_state(s.state),
            };
            format!("{kind:<15} {} {detail}", at(s))
        }
        (kind, None) => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceback_is_shown_whole_under_its_label_or_its_two_ends() {
        // A Node stack: the error and the frame that threw come first.
        let node = "ConformanceError: it broke\n    at tasks.js:55:11\n    at worker.js:472:25\n";
        assert_eq!(
            traceback(node),
            "ConformanceError: it broke\n                  at tasks.js:55:11\n                  at worker.js:472:25"
        );
        let long: String = (1..=100).map(|i| format!("frame {i}\n")).collect();
        let shown = traceback(&long);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), TRACEBACK_HEAD + 1 + TRACEBACK_TAIL);
        assert_eq!(lines[0], "frame 1");
        assert_eq!(lines[TRACEBACK_HEAD].trim(), "… 60 more lines …");
        assert_eq!(lines.last().map(|l| l.trim()), Some("frame 100"));
        assert_eq!(traceback(""), "");
        // No terminal escapes get through.
        assert_eq!(traceback("a\u{1b}[2Jb"), "a [2Jb");
    }

    #[test]
    fn tables_align_and_mark_empty_cells() {
        let t = table(
            &["NAME", "READY", "STATE"],
            &[
                vec!["general".into(), "3".into(), String::new()],
                vec!["io".into(), "12".into(), "paused".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME     READY  STATE\ngeneral  3      -\nio       12     paused\n"
        );
    }

    #[test]
    fn ids_keep_their_distinct_end_and_lists_wrap_under_their_first_item() {
        assert_eq!(
            short_id("01a2418b-51e9-779a-bc40-d189ba64d6c7"),
            "…d189ba64d6c7"
        );
        assert_eq!(short_id("w-1"), "w-1");
        assert_eq!(elide_middle("abcdefghij", 5), "ab…ij");
        assert_eq!(elide_middle("abc", 5), "abc");
        let names: Vec<String> = (0..12)
            .map(|i| format!("nodeconductor.task_{i:02}"))
            .collect();
        let text = wrap_list("w0-general: ", &names);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 1, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(lines[1].starts_with("            nodeconductor."), "{text}");
        // Every name whole, in order.
        let listed: Vec<&str> = text
            .trim_start_matches("w0-general:")
            .split([',', ' ', '\n'])
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(listed, names);
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(timestamp(0), "");
        assert_eq!(timestamp(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(timestamp(1_709_294_400_123), "2024-03-01T12:00:00.123Z");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(7_800_000), "2h10m");
        assert_eq!(duration(273_600_000), "3d04h");
        assert_eq!(short("a\nbcdef", 4), "a b…");
    }
}
