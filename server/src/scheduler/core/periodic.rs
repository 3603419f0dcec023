//! Periodic schedules: each fire time submits the schedule's chain once.
//!
//! A schedule waits on one timer, for its next fire time. When it fires,
//! [`Timing::due`] says which fire times since the last one handled still
//! fire (those missed while the broker was down fire up to `catch_up`),
//! each is submitted as an ordinary chain whose idempotency key names the
//! schedule and the fire time, and the schedule's record moves on to the
//! latest fire time, in the same batch as the chains. So a crash either
//! loses both (the fire happens again after the restart) or keeps both
//! (it does not); and were a fire time ever handled twice, its key would
//! find the chain of the first. With several brokers only the leader runs
//! a scheduler, so only the leader fires.

use super::*;
use crate::scheduler::schedules::Timing;

/// A schedule the machine keeps: its record and its parsed timing.
pub(super) struct Scheduled {
    record: ScheduleRecord,
    timing: Timing,
}

/// How many next fire times a view shows.
const SHOWN_FIRES: usize = 5;

impl Core {
    /// Takes in the schedules recovered from the store, each waiting for
    /// its next fire time (a past one fires at the first round).
    pub(super) fn recover_schedules(&mut self, records: Vec<ScheduleRecord>) {
        for record in records {
            match Self::timing_of(&record) {
                Ok(timing) => {
                    let name = record.name.clone();
                    self.schedules
                        .insert(name.clone(), Scheduled { record, timing });
                    self.arm_schedule(&name);
                }
                Err(e) => {
                    tracing::error!(schedule = %record.name, cause = %e, "skipped a schedule that no longer parses");
                }
            }
        }
    }

    fn timing_of(record: &ScheduleRecord) -> Result<Timing, String> {
        Timing::parse(
            &record.cron,
            record.every_ms,
            &record.timezone,
            record.created_ms,
        )
    }

    /// Adds a schedule or replaces the one of the same name, keeping when
    /// it was created and the last fire time it handled.
    pub fn put_schedule(
        &mut self,
        mut record: ScheduleRecord,
        reply: Req<ScheduleView>,
        now: UnixMs,
    ) {
        match self.schedules.get(&record.name) {
            Some(old) => {
                record.created_ms = old.record.created_ms;
                record.last_fire_ms = old.record.last_fire_ms;
                record.last_chain_id = old.record.last_chain_id.clone();
            }
            None => {
                record.created_ms = now;
                record.last_fire_ms = now;
            }
        }
        let timing = match Self::timing_of(&record) {
            Ok(timing) => timing,
            Err(e) => return self.reply(reply, Err(Error::Conflict(e))),
        };
        let name = record.name.clone();
        tracing::info!(schedule = %name, cron = %record.cron, every_ms = record.every_ms, "schedule stored");
        self.batch.put_schedule(&name, Some(&record));
        self.schedules
            .insert(name.clone(), Scheduled { record, timing });
        self.arm_schedule(&name);
        let view = self.schedule_view(&self.schedules[&name], now);
        self.reply(reply, Ok(view));
    }

    /// Pauses or resumes a schedule. Resuming skips the fire times passed
    /// while paused.
    pub fn pause_schedule(
        &mut self,
        name: &str,
        paused: bool,
        reply: Req<ScheduleView>,
        now: UnixMs,
    ) {
        let Some(scheduled) = self.schedules.get_mut(name) else {
            return self.reply(reply, Err(no_schedule(name)));
        };
        if scheduled.record.paused != paused {
            scheduled.record.paused = paused;
            if !paused {
                scheduled.record.last_fire_ms = scheduled.record.last_fire_ms.max(now);
            }
            self.batch.put_schedule(name, Some(&scheduled.record));
            self.arm_schedule(name);
        }
        let view = self.schedule_view(&self.schedules[name], now);
        self.reply(reply, Ok(view));
    }

    /// Removes a schedule; its chains are left alone.
    pub fn remove_schedule(&mut self, name: &str, reply: Req<()>) {
        let result = match self.schedules.remove(name) {
            Some(_) => {
                self.batch.put_schedule(name, None);
                tracing::info!(schedule = %name, "schedule removed");
                Ok(())
            }
            None => Err(no_schedule(name)),
        };
        self.reply(reply, result);
    }

    /// Every schedule by name, with its next fire times.
    pub fn schedule_views(&self, now: UnixMs) -> Vec<ScheduleView> {
        let mut views: Vec<ScheduleView> = self
            .schedules
            .values()
            .map(|s| self.schedule_view(s, now))
            .collect();
        views.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        views
    }

    fn schedule_view(&self, scheduled: &Scheduled, now: UnixMs) -> ScheduleView {
        let mut next_fires = Vec::new();
        if !scheduled.record.paused {
            let mut at = scheduled.record.last_fire_ms.max(now);
            while next_fires.len() < SHOWN_FIRES {
                let Some(next) = scheduled.timing.next_after(at) else {
                    break;
                };
                next_fires.push(next);
                at = next;
            }
        }
        ScheduleView {
            record: scheduled.record.clone(),
            next_fires,
        }
    }

    /// Sets the timer of a schedule's next fire time after what it handled
    /// (one already past fires at the next round).
    fn arm_schedule(&mut self, name: &str) {
        let Some(scheduled) = self.schedules.get(name) else {
            return;
        };
        if scheduled.record.paused {
            return;
        }
        let after = scheduled.record.last_fire_ms;
        if let Some(at) = scheduled.timing.next_after(after) {
            let name = name.to_owned();
            self.add_timer(at, Timer::Schedule { name, at });
        }
    }

    /// A schedule's timer fired: submits the chain of each fire time due.
    pub(super) fn on_schedule_timer(
        &mut self,
        reads: &dyn Lookup,
        name: &str,
        at: UnixMs,
        now: UnixMs,
    ) {
        let Some(scheduled) = self.schedules.get(name) else {
            return;
        };
        let record = &scheduled.record;
        // A timer left from before a pause, a resume or a replacement.
        if record.paused || scheduled.timing.next_after(record.last_fire_ms) != Some(at) {
            return;
        }
        let (fire, latest) = scheduled
            .timing
            .due(record.last_fire_ms, now, record.catch_up);
        let specs: Vec<(UnixMs, ChainSpec)> = fire
            .iter()
            .map(|t| (*t, record.chain_spec(*t, now)))
            .collect();
        let mut last_chain = None;
        for (fire_ms, spec) in specs {
            match self
                .check_admissible(reads, &spec)
                .map(|stored| self.admit(spec, stored, now))
            {
                Ok(submitted) => {
                    tracing::info!(schedule = %name, fire_ms, chain.id = %submitted.chain_id, dedup = ?submitted.dedup, "schedule fired");
                    last_chain = Some(submitted.chain_id);
                }
                Err(e) => {
                    tracing::error!(schedule = %name, fire_ms, cause = %e, "schedule could not submit its chain");
                }
            }
        }
        let scheduled = self.schedules.get_mut(name).expect("checked above");
        scheduled.record.last_fire_ms = latest.max(scheduled.record.last_fire_ms);
        if let Some(chain_id) = last_chain {
            scheduled.record.last_chain_id = chain_id.to_string();
        }
        self.batch.put_schedule(name, Some(&scheduled.record));
        self.arm_schedule(name);
    }
}

fn no_schedule(name: &str) -> Error {
    Error::NotFound(format!("schedule {name:?} not found"))
}
