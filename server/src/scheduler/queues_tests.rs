//! Unit tests of the ready queues (`queues.rs`).

use super::*;

/// A task id spelled by a short name, for readable tests.
fn t(name: &str) -> TaskId {
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    TaskId::from_uuid(uuid::Uuid::from_bytes(bytes))
}

fn hot(task_id: &str) -> Queued {
    Queued::Hot(t(task_id))
}

/// Passes over nothing.
fn none(_: &str, _: Head) -> bool {
    false
}

impl Queues {
    /// What [`Queues::pop_for`] takes, without where it sat.
    fn pop(
        &mut self,
        queues: &[String],
        names: &Set<String>,
        passed: impl Fn(&str, Head) -> bool,
    ) -> Option<Queued> {
        self.pop_for(queues, names, 0, passed)
            .map(|(queued, _)| queued)
    }

    /// The keys [`Queues::take_cold`] takes.
    fn take_cold_keys(&mut self, which: impl Fn(&str, &str) -> bool) -> Vec<ChainKey> {
        self.take_cold(which)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }
}

#[test]
fn a_line_whose_head_is_passed_over_waits_and_the_others_go_on() {
    let mut q = Queues::default();
    q.push("general", "a", 0, t("held"), 1);
    q.push("general", "a", 0, t("t2"), 2);
    q.push("general", "b", 0, t("t3"), 3);
    let qs = vec!["general".to_string()];
    let all = names(&["a", "b"]);
    let passed = |_: &str, head: Head| head == Head::Hot(t("held"));
    assert_eq!(q.pop(&qs, &all, passed), Some(hot("t3")));
    // Line "a" waits behind its head: t2 does not jump it.
    assert_eq!(q.pop(&qs, &all, passed), None);
    assert_eq!(q.pop(&qs, &all, none), Some(hot("held")));
    assert_eq!(q.pop(&qs, &all, passed), Some(hot("t2")));
}

#[test]
fn cold_and_hot_entries_share_one_order_and_swap_in_place() {
    let mut q = Queues::default();
    q.push("general", "a", 0, t("t1"), 1);
    q.push_cold("general", "a", 0, 42, 2);
    q.push("general", "a", 0, t("t3"), 3);
    q.push("general", "a", 0, t("t4"), 4);
    assert!(q.cool(t("t3"), 43));
    assert!(q.remove(t("t4")));
    assert_eq!(
        q.take_cold_keys(|_, name| name == "b"),
        Vec::<ChainKey>::new()
    );
    assert!(q.warm("general", "a", 42, t("t2")));
    assert!(!q.warm("general", "a", 42, t("t2")));
    assert_eq!(q.line_len("general", "a"), 3);
    assert_eq!(q.depths()["general"].oldest_ready_ms, Some(1));
    let all = names(&["a"]);
    let qs = vec!["general".to_string()];
    assert_eq!(q.pop(&qs, &all, none), Some(hot("t1")));
    assert_eq!(q.pop(&qs, &all, none), Some(hot("t2")));
    assert!(!q.remove(t("t2")));
    assert_eq!(q.pop(&qs, &all, none), Some(Queued::Cold(43)));
    assert_eq!(q.pop(&qs, &all, none), None);
    assert!(q.depths().is_empty());
}

#[test]
fn taking_the_cold_entries_of_a_line_leaves_its_hot_ones_in_order() {
    let mut q = Queues::default();
    q.push_cold("general", "a", 0, 1, 1);
    q.push("general", "a", 0, t("t2"), 2);
    q.push_cold("general", "a", 5, 3, 3);
    q.push_cold("io", "a", 0, 4, 4);
    let mut taken = q.take_cold_keys(|queue, _| queue == "general");
    taken.sort_unstable();
    assert_eq!(taken, [1, 3]);
    assert_eq!(q.line_len("general", "a"), 1);
    assert_eq!(q.entries("general"), [hot("t2")]);
    assert!(q.remove(t("t2")));
    assert_eq!(q.take_cold_keys(|_, _| true), [4]);
    assert!(q.depths().is_empty());
}

#[test]
fn an_entry_put_back_is_picked_again_first() {
    let mut q = Queues::default();
    q.push_cold("general", "a", 0, 1, 1);
    q.push("general", "a", 0, t("t2"), 2);
    q.push_cold("general", "a", 0, 3, 3);
    let qs = vec!["general".to_string()];
    let all = names(&["a"]);
    let (first, place) = q.pop_for(&qs, &all, 0, none).unwrap();
    assert_eq!(first, Queued::Cold(1));
    q.put_back(first, place);
    let (again, place) = q.pop_for(&qs, &all, 0, none).unwrap();
    assert_eq!(again, Queued::Cold(1));
    q.put_back(again, place);
    // Both cold entries taken, the later one put back: it keeps its
    // place behind the hot one.
    let mut taken = q.take_cold(|_, _| true);
    assert_eq!(taken.len(), 2);
    let (key, place) = taken.remove(1);
    q.put_back(Queued::Cold(key), place);
    assert_eq!(q.pop(&qs, &all, none), Some(hot("t2")));
    assert_eq!(q.pop(&qs, &all, none), Some(Queued::Cold(3)));
    assert_eq!(q.pop(&qs, &all, none), None);
    assert!(q.depths().is_empty());
}

#[test]
fn picking_costs_the_fewer_of_the_workers_names_and_the_queues_lines() {
    let mut q = Queues::default();
    for i in 0..10_000 {
        q.push("general", &format!("nobody-{i}"), 0, t(&format!("n{i}")), i);
    }
    q.push("general", "served", 0, t("t"), 10_000);
    let qs = vec!["general".to_string()];
    let examined = || EXAMINED.with(std::cell::Cell::get);
    let before = examined();
    let served = names(&["served", "other"]);
    assert_eq!(q.pop(&qs, &served, none), Some(Queued::Hot(t("t"))));
    assert_eq!(q.pop(&qs, &served, none), None);
    let went_through = examined() - before;
    assert!(went_through <= 4, "went through {went_through} lines");
    // A worker of many names, a queue of few lines.
    let mut q = Queues::default();
    q.push("general", "a", 0, t("t"), 1);
    let many: Set<String> = (0..10_000)
        .map(|i| format!("x{i}"))
        .chain(["a".into()])
        .collect();
    let before = examined();
    assert_eq!(q.pop(&qs, &many, none), Some(Queued::Hot(t("t"))));
    assert_eq!(examined() - before, 1, "went through the worker's names");
}

#[test]
fn waiting_raises_a_priority_one_level_per_aging_up_to_nine() {
    let qs = vec!["general".to_string()];
    let all = names(&["a", "b"]);
    let fill = |q: &mut Queues| {
        q.push("general", "a", 0, t("low"), 0);
        q.push("general", "b", 9, t("urgent"), 1000);
        q.push("general", "a", 3, t("mid"), 1000);
    };
    // At 1000 ms with one level per 100 ms: low counts as 9 (capped)
    // and is older than urgent; mid counts as 3.
    let mut q = Queues::default();
    q.set_aging(100);
    fill(&mut q);
    let at = |q: &mut Queues, now| q.pop_for(&qs, &all, now, none).map(|(x, _)| x);
    assert_eq!(at(&mut q, 1000), Some(hot("low")));
    assert_eq!(at(&mut q, 1000), Some(hot("urgent")));
    assert_eq!(at(&mut q, 1000), Some(hot("mid")));
    // At 500 ms low counts as 5: urgent, then low, then mid (3).
    let mut q = Queues::default();
    q.set_aging(100);
    fill(&mut q);
    assert_eq!(at(&mut q, 500), Some(hot("urgent")));
    assert_eq!(at(&mut q, 500), Some(hot("low")));
    // Without aging, strict priorities.
    let mut q = Queues::default();
    fill(&mut q);
    assert_eq!(at(&mut q, 1_000_000), Some(hot("urgent")));
    assert_eq!(at(&mut q, 1_000_000), Some(hot("mid")));
    assert_eq!(q.depths()["general"].by_priority, [(0, 1)].into());
}

#[test]
fn a_removed_slot_in_the_middle_is_skipped() {
    let mut q = Queues::default();
    for (i, name) in ["t1", "t2", "t3"].iter().enumerate() {
        q.push("general", "a", 0, t(name), i as u64);
    }
    assert!(q.remove(t("t2")));
    assert_eq!(q.entries("general"), [hot("t1"), hot("t3")]);
    let qs = vec!["general".to_string()];
    assert_eq!(q.pop(&qs, &names(&["a"]), none), Some(hot("t1")));
    assert_eq!(q.pop(&qs, &names(&["a"]), none), Some(hot("t3")));
    assert_eq!(q.line_len("general", "a"), 0);
}

fn names(n: &[&str]) -> Set<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[test]
fn fifo_across_names_and_priority_first() {
    let mut q = Queues::default();
    q.push("general", "a", 0, t("t1"), 1);
    q.push("general", "b", 0, t("t2"), 2);
    q.push("general", "a", 5, t("t3"), 3);
    let all = names(&["a", "b"]);
    let qs = vec!["general".to_string()];
    assert_eq!(q.pop(&qs, &all, none).as_ref(), Some(&hot("t3")));
    assert_eq!(q.pop(&qs, &all, none).as_ref(), Some(&hot("t1")));
    assert_eq!(q.pop(&qs, &all, none).as_ref(), Some(&hot("t2")));
    assert_eq!(q.pop(&qs, &all, none), None);
}

#[test]
fn only_subscribed_queues_and_registered_names() {
    let mut q = Queues::default();
    q.push("heavy", "h", 0, t("t1"), 1);
    q.push("general", "a", 0, t("t2"), 1);
    let general = vec!["general".to_string()];
    assert_eq!(q.pop(&general, &names(&["h"]), none), None);
    assert_eq!(
        q.pop(&general, &names(&["a", "h"]), none).as_ref(),
        Some(&hot("t2"))
    );
    assert_eq!(q.pop(&general, &names(&["a", "h"]), none), None);
    assert!(q.remove(t("t1")));
    assert!(!q.remove(t("t1")));
    assert!(q.depths().is_empty());
}

#[test]
fn a_paused_queue_keeps_its_tasks_and_skips_picking() {
    let mut q = Queues::default();
    q.push("io", "a", 0, t("t1"), 1);
    q.push("general", "a", 0, t("t2"), 2);
    let both = vec!["io".to_string(), "general".to_string()];
    assert!(q.pause("io"));
    assert!(!q.pause("io"));
    assert_eq!(
        q.pop(&both, &names(&["a"]), none).as_ref(),
        Some(&hot("t2"))
    );
    assert_eq!(q.pop(&both, &names(&["a"]), none), None);
    assert_eq!(q.entries("io"), [hot("t1")]);
    assert!(q.resume("io"));
    assert_eq!(
        q.pop(&both, &names(&["a"]), none).as_ref(),
        Some(&hot("t1"))
    );
}
