//! The driver: everything around the machine that touches a channel.
//!
//! [`Core`] decides and [`Driver`] carries out. The machine holds no
//! channel: a request reaches it as a [`Req`] (a number), a worker as its
//! id, a watcher as a count; what it decides leaves as plain data
//! ([`Output`]). The driver keeps what those stand for: the oneshot of
//! each request, the stream of each worker, the streams of each watched
//! chain. It turns a [`Command`] into calls on the machine, and an output
//! whose round is durable into a send. A send that fails (a worker that
//! does not read its stream) comes back to the machine as an input
//! ([`Core::worker_gone`]), never from inside a transition.
//!
//! The scheduler loop (`mod.rs`) owns one driver; so do the unit tests and
//! the simulator, which thus exercise the same translation.

use tokio::sync::{mpsc, oneshot};

use super::core::{Answer, Answerable, Core, Output, Req, RequestId};
use super::{Command, Error, Settings, Snapshot, watchers};
use crate::domain::*;
use crate::store::{Fault, Shared};

/// Sends an answer on the oneshot it belongs to.
type Answering = Box<dyn FnOnce(Answer) + Send>;

pub struct Driver {
    /// The machine.
    pub core: Core,
    /// What the machine reads of the store, lent with each input that may
    /// need it (see `store::Lookup`): the machine keeps no store handle.
    pub(super) reads: Shared,
    /// Requests waiting for their answer, by number.
    replies: Map<RequestId, Answering>,
    next_request: RequestId,
    /// The stream of each connected worker, by worker id.
    workers: Map<WorkerId, mpsc::Sender<ToWorker>>,
    /// Watchers whose snapshot has not left yet, by the number of the
    /// request that opened them.
    opening: Map<RequestId, watchers::Sender>,
    /// The watchers of each watched chain.
    watchers: Map<ChainId, Vec<watchers::Sender>>,
}

impl Driver {
    pub fn new(core: Core, reads: Shared) -> Self {
        Driver {
            core,
            reads,
            replies: Map::default(),
            next_request: 0,
            workers: Map::default(),
            opening: Map::default(),
            watchers: Map::default(),
        }
    }

    /// Numbers a request whose answer goes to `reply`.
    pub fn request<T: Answerable + Send + 'static>(
        &mut self,
        reply: oneshot::Sender<Result<T, Error>>,
    ) -> Req<T> {
        self.next_request += 1;
        let id = self.next_request;
        let answering: Answering = Box::new(move |answer| {
            if let Some(result) = T::unwrap(answer) {
                let _ = reply.send(result);
            } else {
                debug_assert!(false, "request {id} answered with the wrong type");
            }
        });
        self.replies.insert(id, answering);
        Req::new(id)
    }

    /// Watch streams open now; forgets those whose client went away.
    pub fn watch_count(&mut self) -> usize {
        let mut gone = Vec::new();
        self.watchers.retain(|chain_id, list| {
            let before = list.len();
            list.retain(|tx| !tx.is_closed());
            if list.len() < before {
                gone.push((*chain_id, before - list.len()));
            }
            !list.is_empty()
        });
        for (chain_id, n) in gone {
            self.core.unwatched(chain_id, n);
        }
        self.watchers.values().map(Vec::len).sum::<usize>() + self.opening.len()
    }

    /// Applies one command: refused at once while the store is in trouble
    /// if it would store new work or read a chain (see `mod.rs`), answered
    /// at once if it only reads what the machine holds, otherwise handed to
    /// the machine with a number for its answer.
    pub fn handle(&mut self, cmd: Command, fault: Option<Fault>, limits: &Settings, now: UnixMs) {
        let cmd = match (fault, cmd) {
            (None, cmd) => cmd,
            (Some(f), Command::Get(_, r)) => return refuse(r, Error::unreadable(f)),
            (Some(f), Command::StepResult(_, _, r)) => return refuse(r, Error::unreadable(f)),
            (Some(f), Command::Inspect(_, r)) => return refuse(r, Error::unreadable(f)),
            (Some(f), Command::Watch(_, _, r)) => return refuse(r, Error::unreadable(f)),
            (Some(f), Command::Submit(_, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::SubmitMany(_, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::Cancel(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::Requeue(_, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::Pause(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::Purge(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::SetLimit(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::SetRate(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::Drain(_, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::PutSchedule(_, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::PauseSchedule(_, _, r)) => return refuse(r, Error::refused(f)),
            (Some(f), Command::RemoveSchedule(_, r)) => return refuse(r, Error::refused(f)),
            (Some(_), cmd) => cmd,
        };
        match cmd {
            Command::Submit(spec, reply) => {
                let req = self.request(reply);
                self.core.submit(&self.reads, spec, req, now);
            }
            Command::SubmitMany(specs, reply) => {
                let req = self.request(reply);
                self.core.submit_many(&self.reads, specs, req, now);
            }
            Command::Get(id, reply) => {
                let req = self.request(reply);
                self.core.get(&self.reads, id, req);
            }
            Command::StepResult(id, task_id, reply) => {
                let req = self.request(reply);
                self.core.step_result(&self.reads, id, task_id, req);
            }
            Command::Inspect(id, reply) => {
                let req = self.request(reply);
                self.core.inspect(&self.reads, id, req);
            }
            Command::Watch(id, tx, reply) => {
                if self.watch_count() >= limits.max_watches {
                    return refuse(
                        reply,
                        Error::Exhausted(format!(
                            "too many WatchChain streams open: the limit is {} (--max-watches)",
                            limits.max_watches
                        )),
                    );
                }
                let req = self.request(reply);
                self.opening.insert(req.id(), tx);
                self.core.watch(&self.reads, id, req);
            }
            Command::Cancel(id, reason, reply) => {
                let req = self.request(reply);
                self.core.cancel(&self.reads, id, reason, req, now);
            }
            Command::Connect(hello, tx, reply) => {
                if self.core.worker_count() >= limits.max_workers {
                    return refuse(
                        reply,
                        Error::Exhausted(format!(
                            "too many workers connected: the limit is {} (--max-workers)",
                            limits.max_workers
                        )),
                    );
                }
                let id = self.connect(hello, tx, now);
                let _ = reply.send(Ok(id));
            }
            Command::FromWorker(id, msg) => self.core.on_worker_message(id, msg, now),
            Command::Disconnected(id) => self.core.worker_gone(id, false, now),
            Command::Queues(reply) => {
                let _ = reply.send(self.core.queue_stats(now));
            }
            Command::Workers(reply) => {
                let _ = reply.send(self.core.worker_stats());
            }
            Command::Throttles(reply) => {
                let _ = reply.send(self.core.throttle_info());
            }
            Command::SetLimit(identity, limit, reply) => {
                let req = self.request(reply);
                self.core.set_limit(identity, limit, req, now);
            }
            Command::SetRate(identity, rate, reply) => {
                let req = self.request(reply);
                self.core.set_rate(identity, rate, req, now);
            }
            Command::Pause(queue, paused, reply) => {
                let req = self.request(reply);
                self.core.pause_queue(&queue, paused, req, now);
            }
            Command::Purge(queue, reason, reply) => {
                let req = self.request(reply);
                self.core
                    .purge_queue(&self.reads, &queue, &reason, req, now);
            }
            Command::Requeue(id, reply) => {
                let req = self.request(reply);
                self.core.requeue(&self.reads, id, req, now);
            }
            Command::Drain(worker, reply) => {
                let req = self.request(reply);
                self.core.drain_workers(&worker, req);
            }
            Command::PutSchedule(record, reply) => {
                let req = self.request(reply);
                self.core.put_schedule(record, req, now);
            }
            Command::Schedules(reply) => {
                let _ = reply.send(self.core.schedule_views(now));
            }
            Command::PauseSchedule(name, paused, reply) => {
                let req = self.request(reply);
                self.core.pause_schedule(&name, paused, req, now);
            }
            Command::RemoveSchedule(name, reply) => {
                let req = self.request(reply);
                self.core.remove_schedule(&name, req);
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    queues: self.core.queue_stats(now),
                    throttles: self.core.throttle_info(),
                    workers: self.core.worker_stats(),
                    queue_counts: self.core.queue_counts(),
                });
            }
        }
    }

    /// Assigns what can start now (see [`Core::dispatch`]).
    pub fn dispatch(&mut self, now: UnixMs) {
        self.core.dispatch(&self.reads, now);
    }

    /// Fires the timers due by `now` (see [`Core::fire_timers`]).
    pub fn fire_timers(&mut self, now: UnixMs) {
        self.core.fire_timers(&self.reads, now);
    }

    /// Goes on with the work on child chains (see [`Core::follow_up`]).
    pub fn follow_up(&mut self, now: UnixMs) {
        self.core.follow_up(&self.reads, now);
    }

    /// Removes ended chains past their retention (see [`Core::sweep`]).
    pub fn sweep(&mut self, now: UnixMs) {
        self.core.sweep(&self.reads, now);
    }

    /// A chain as a client would read it (see [`Core::chain`]), for the
    /// simulator's and the unit tests' checks.
    ///
    /// # Errors
    /// As [`Core::chain`].
    #[cfg(test)]
    pub fn chain(&self, chain_id: ChainId) -> Result<ChainRecord, Error> {
        self.core.chain(&self.reads, chain_id)
    }

    /// Registers a worker's stream; returns its worker id.
    pub fn connect(
        &mut self,
        hello: WorkerHello,
        tx: mpsc::Sender<ToWorker>,
        now: UnixMs,
    ) -> WorkerId {
        let id = self.core.connect(&self.reads, hello, now);
        self.workers.insert(id, tx);
        id
    }

    /// Closes the streams of workers the machine let go: dropping the
    /// sender ends the stream.
    pub fn close(&mut self, worker_ids: Vec<WorkerId>) {
        for id in worker_ids {
            self.workers.remove(&id);
        }
    }

    /// Sends an output whose round is durable (or an early assignment),
    /// once the machine has kept its books of it ([`Core::leaving`]).
    pub fn deliver(&mut self, output: Output, now: UnixMs) {
        let Some(output) = self.core.leaving(output) else {
            return;
        };
        match output {
            Output::Reply { request, answer } => {
                self.opening.remove(&request);
                if let Some(answering) = self.replies.remove(&request) {
                    answering(*answer);
                }
            }
            Output::ToWorker { worker_id, msg } => {
                let Some(tx) = self.workers.get(&worker_id) else {
                    return;
                };
                if let Err(e) = tx.try_send(msg) {
                    // A worker that does not read its stream must not stall
                    // the broker: it is dropped as if its connection broke,
                    // and its leases run out unless it comes back.
                    tracing::warn!(worker.id = %worker_id, cause = %e, "worker stream full or closed; disconnecting it");
                    self.workers.remove(&worker_id);
                    self.core.worker_gone(worker_id, false, now);
                }
            }
            Output::Event {
                chain_id,
                event,
                last,
            } => {
                let Some(list) = self.watchers.get_mut(&chain_id) else {
                    return;
                };
                // A watcher over its byte budget is dropped here; its stream
                // ends saying it fell behind (watchers.rs).
                let before = list.len();
                list.retain(|tx| tx.offer(&event));
                let gone = before - list.len();
                if last || list.is_empty() {
                    self.watchers.remove(&chain_id);
                }
                if gone > 0 && !last {
                    self.core.unwatched(chain_id, gone);
                }
            }
            Output::Snapshot {
                request,
                chain_id,
                event,
                keep,
            } => {
                let kept = match self.opening.remove(&request) {
                    Some(tx) if tx.offer(&event) && keep => {
                        self.watchers.entry(chain_id).or_default().push(tx);
                        true
                    }
                    _ => false,
                };
                if keep && !kept {
                    self.core.unwatched(chain_id, 1);
                }
            }
            Output::Settled(_) => {}
        }
    }
}

/// Answers a request with `error` instead of running it.
fn refuse<T>(reply: oneshot::Sender<Result<T, Error>>, error: Error) {
    let _ = reply.send(Err(error));
}
