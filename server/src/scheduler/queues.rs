//! Ready queues: per queue, per task name, FIFO within a priority.
//!
//! A task may go only to a worker that subscribed to its queue and
//! registered its name, so each queue keeps one ordered map per task name.
//! Picking for a worker looks at the head of each (queue, name) the worker
//! serves and takes the best: highest priority, then oldest. A paused
//! queue keeps its tasks but is skipped when picking.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::domain::UnixMs;

/// Orders ready tasks: priority descending, then arrival.
type Rank = (Reverse<i32>, u64);

#[derive(Debug, Default)]
pub struct Queues {
    by_queue: HashMap<String, HashMap<String, BTreeMap<Rank, Entry>>>,
    /// Where each queued task sits, so it can be removed (cancel, deadline).
    index: HashMap<String, (String, String, Rank)>,
    next: u64,
    /// Queues whose tasks stay put until resumed.
    paused: HashSet<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    task_id: String,
    ready_ms: UnixMs,
}

/// Counts of one queue, for inspection.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Depth {
    pub ready: u64,
    pub oldest_ready_ms: Option<UnixMs>,
}

impl Queues {
    pub fn push(
        &mut self,
        queue: &str,
        name: &str,
        priority: i32,
        task_id: &str,
        ready_ms: UnixMs,
    ) {
        self.next += 1;
        let rank = (Reverse(priority), self.next);
        self.by_queue
            .entry(queue.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
            .insert(
                rank,
                Entry {
                    task_id: task_id.to_owned(),
                    ready_ms,
                },
            );
        self.index.insert(
            task_id.to_owned(),
            (queue.to_owned(), name.to_owned(), rank),
        );
    }

    /// Takes the best task a worker may run, if any.
    pub fn pop_for(&mut self, queues: &[String], names: &HashSet<String>) -> Option<String> {
        let mut best: Option<(Rank, &str, &str)> = None;
        for queue in queues {
            let Some(by_name) = self.by_queue.get(queue) else {
                continue;
            };
            if !self.paused.is_empty() && self.paused.contains(queue) {
                continue;
            }
            for (name, entries) in by_name {
                if !names.contains(name) {
                    continue;
                }
                if let Some((rank, _)) = entries.first_key_value()
                    && best.is_none_or(|(b, _, _)| *rank < b)
                {
                    best = Some((*rank, queue.as_str(), name.as_str()));
                }
            }
        }
        let (rank, queue, name) = best?;
        let (queue, name) = (queue.to_owned(), name.to_owned());
        let entry = self.take(&queue, &name, rank)?;
        self.index.remove(&entry.task_id);
        Some(entry.task_id)
    }

    /// Removes a queued task; false if it was not queued.
    pub fn remove(&mut self, task_id: &str) -> bool {
        match self.index.remove(task_id) {
            Some((queue, name, rank)) => self.take(&queue, &name, rank).is_some(),
            None => false,
        }
    }

    /// Stops picking from `queue` (true if it was not paused yet).
    pub fn pause(&mut self, queue: &str) -> bool {
        self.paused.insert(queue.to_owned())
    }

    /// Picks from `queue` again (true if it was paused).
    pub fn resume(&mut self, queue: &str) -> bool {
        self.paused.remove(queue)
    }

    pub fn is_paused(&self, queue: &str) -> bool {
        self.paused.contains(queue)
    }

    pub fn paused(&self) -> impl Iterator<Item = &str> {
        self.paused.iter().map(String::as_str)
    }

    /// The tasks waiting in `queue`, oldest first within each task name.
    pub fn task_ids(&self, queue: &str) -> Vec<String> {
        self.by_queue.get(queue).map_or_else(Vec::new, |by_name| {
            by_name
                .values()
                .flat_map(|m| m.values().map(|e| e.task_id.clone()))
                .collect()
        })
    }

    pub fn depths(&self) -> HashMap<String, Depth> {
        self.by_queue
            .iter()
            .map(|(queue, by_name)| {
                let mut d = Depth::default();
                for e in by_name.values().flat_map(|m| m.values()) {
                    d.ready += 1;
                    d.oldest_ready_ms =
                        Some(d.oldest_ready_ms.map_or(e.ready_ms, |o| o.min(e.ready_ms)));
                }
                (queue.clone(), d)
            })
            .collect()
    }

    fn take(&mut self, queue: &str, name: &str, rank: Rank) -> Option<Entry> {
        let by_name = self.by_queue.get_mut(queue)?;
        let entries = by_name.get_mut(name)?;
        let entry = entries.remove(&rank);
        if entries.is_empty() {
            by_name.remove(name);
            if by_name.is_empty() {
                self.by_queue.remove(queue);
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> HashSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fifo_across_names_and_priority_first() {
        let mut q = Queues::default();
        q.push("general", "a", 0, "t1", 1);
        q.push("general", "b", 0, "t2", 2);
        q.push("general", "a", 5, "t3", 3);
        let all = names(&["a", "b"]);
        let qs = vec!["general".to_string()];
        assert_eq!(q.pop_for(&qs, &all).as_deref(), Some("t3"));
        assert_eq!(q.pop_for(&qs, &all).as_deref(), Some("t1"));
        assert_eq!(q.pop_for(&qs, &all).as_deref(), Some("t2"));
        assert_eq!(q.pop_for(&qs, &all), None);
    }

    #[test]
    fn only_subscribed_queues_and_registered_names() {
        let mut q = Queues::default();
        q.push("heavy", "h", 0, "t1", 1);
        q.push("general", "a", 0, "t2", 1);
        let general = vec!["general".to_string()];
        assert_eq!(q.pop_for(&general, &names(&["h"])), None);
        assert_eq!(
            q.pop_for(&general, &names(&["a", "h"])).as_deref(),
            Some("t2")
        );
        assert_eq!(q.pop_for(&general, &names(&["a", "h"])), None);
        assert!(q.remove("t1"));
        assert!(!q.remove("t1"));
        assert!(q.depths().is_empty());
    }

    #[test]
    fn a_paused_queue_keeps_its_tasks_and_skips_picking() {
        let mut q = Queues::default();
        q.push("io", "a", 0, "t1", 1);
        q.push("general", "a", 0, "t2", 2);
        let both = vec!["io".to_string(), "general".to_string()];
        assert!(q.pause("io"));
        assert!(!q.pause("io"));
        assert_eq!(q.pop_for(&both, &names(&["a"])).as_deref(), Some("t2"));
        assert_eq!(q.pop_for(&both, &names(&["a"])), None);
        assert_eq!(q.task_ids("io"), ["t1"]);
        assert!(q.resume("io"));
        assert_eq!(q.pop_for(&both, &names(&["a"])).as_deref(), Some("t1"));
    }
}
