//! Batches on the worker stream: several messages in one frame.
//!
//! A worker turns over a task with three stream messages (its assignment,
//! its outcome, the outcome's acknowledgment). Where a runtime pays a high
//! price per message (Python's `grpc.aio` makes an event-loop round trip per
//! read and per write), that price dominates a short task. So both sides
//! pack whatever is ready at the same moment into one `BrokerBatch` or
//! `WorkerBatch` frame, within a size the reader announced (`Hello` and
//! `Welcome` carry `batch_bytes`), and the reader unpacks it as if the
//! messages had come one by one.
//!
//! [`pack`] is the one packing rule both sides use.

use prost::Message;

use crate::pb::{self, broker_message, worker_message};

/// Bytes a nested message adds to a batch beyond its own encoding: the
/// field's tag and length prefix (also the batch frame's own).
pub const NESTING_BYTES: usize = 1 + 10;

/// A stream message that can travel in a batch of its kind.
pub trait Batchable: Message + Sized {
    /// One frame holding `messages`, in order.
    fn batch(messages: Vec<Self>) -> Self;
    /// Whether the message must travel in a frame of its own (the Hello and
    /// the Welcome, which the other side reads first and alone).
    fn alone(&self) -> bool;
}

impl Batchable for pb::BrokerMessage {
    fn batch(messages: Vec<Self>) -> Self {
        Self {
            msg: Some(broker_message::Msg::Batch(pb::BrokerBatch { messages })),
        }
    }

    fn alone(&self) -> bool {
        matches!(
            self.msg,
            Some(broker_message::Msg::Welcome(_) | broker_message::Msg::Batch(_))
        )
    }
}

impl Batchable for pb::WorkerMessage {
    fn batch(messages: Vec<Self>) -> Self {
        Self {
            msg: Some(worker_message::Msg::Batch(pb::WorkerBatch { messages })),
        }
    }

    fn alone(&self) -> bool {
        matches!(
            self.msg,
            Some(worker_message::Msg::Hello(_) | worker_message::Msg::Batch(_))
        )
    }
}

/// Packs `messages`, in order, into frames of at most `limit` encoded bytes.
///
/// A run of two or more messages that fit together becomes one batch; a
/// message alone stays as it is. A message that must go alone
/// ([`Batchable::alone`]) or is too large for a batch by itself gets a frame
/// of its own. A `limit` of 0 (the reader takes no batches) leaves every
/// message on its own.
pub fn pack<M: Batchable>(messages: Vec<M>, limit: usize) -> Vec<M> {
    fn close<M: Batchable>(frames: &mut Vec<M>, run: &mut Vec<M>) {
        match run.len() {
            0 => {}
            1 => frames.extend(run.pop()),
            _ => frames.push(M::batch(std::mem::take(run))),
        }
    }
    if messages.len() < 2 {
        // Nothing to pack: skip sizing the message (the usual lone assignment).
        return messages;
    }
    let budget = limit.saturating_sub(NESTING_BYTES);
    let mut frames = Vec::with_capacity(1);
    let mut run = Vec::new();
    let mut run_bytes = 0;
    for message in messages {
        let bytes = message.encoded_len() + NESTING_BYTES;
        let alone = bytes > budget || message.alone();
        if alone || run_bytes + bytes > budget {
            close(&mut frames, &mut run);
            run_bytes = 0;
        }
        if alone {
            frames.push(message);
        } else {
            run_bytes += bytes;
            run.push(message);
        }
    }
    close(&mut frames, &mut run);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(task_id: &str) -> pb::BrokerMessage {
        pb::BrokerMessage {
            msg: Some(broker_message::Msg::OutcomeAck(pb::OutcomeAck {
                task: Some(pb::TaskRef {
                    task_id: task_id.into(),
                    attempt: 1,
                }),
                accepted: true,
                reason: String::new(),
            })),
        }
    }

    fn welcome() -> pb::BrokerMessage {
        pb::BrokerMessage {
            msg: Some(broker_message::Msg::Welcome(pb::Welcome::default())),
        }
    }

    /// The task ids of the frames, a batch's as one inner list.
    fn shape(frames: &[pb::BrokerMessage]) -> Vec<Vec<String>> {
        let id = |m: &pb::BrokerMessage| match &m.msg {
            Some(broker_message::Msg::OutcomeAck(a)) => a.task.clone().unwrap().task_id,
            Some(broker_message::Msg::Welcome(_)) => "welcome".into(),
            other => panic!("unexpected {other:?}"),
        };
        frames
            .iter()
            .map(|f| match &f.msg {
                Some(broker_message::Msg::Batch(b)) => b.messages.iter().map(id).collect(),
                _ => vec![id(f)],
            })
            .collect()
    }

    #[test]
    fn ready_messages_go_in_one_batch_in_order_and_the_welcome_alone() {
        let frames = pack(vec![welcome(), ack("a"), ack("b"), ack("c")], 1 << 20);
        assert_eq!(shape(&frames), vec![vec!["welcome"], vec!["a", "b", "c"]]);
        // A lone message is not wrapped.
        assert_eq!(pack(vec![ack("a")], 1 << 20), vec![ack("a")]);
    }

    #[test]
    fn a_batch_stays_within_the_limit_and_a_large_message_goes_alone() {
        let one = ack("a").encoded_len() + NESTING_BYTES;
        // Room for two acks per batch.
        let limit = NESTING_BYTES + 2 * one;
        let frames = pack((0..5).map(|i| ack(&i.to_string())).collect(), limit);
        assert_eq!(
            shape(&frames),
            vec![vec!["0", "1"], vec!["2", "3"], vec!["4"]]
        );
        for frame in &frames {
            assert!(
                frame.encoded_len() <= limit,
                "{} > {limit}",
                frame.encoded_len()
            );
        }
        // A limit below one message (or 0: no batches): every message
        // alone, none lost.
        for limit in [0, 8] {
            let frames = pack(vec![ack("a"), ack("b")], limit);
            assert_eq!(shape(&frames), vec![vec!["a"], vec!["b"]]);
        }
    }

    #[test]
    fn the_hello_is_never_packed() {
        let hello = pb::WorkerMessage {
            msg: Some(worker_message::Msg::Hello(pb::Hello::default())),
        };
        let drain = pb::WorkerMessage {
            msg: Some(worker_message::Msg::Drain(pb::Drain {})),
        };
        let frames = pack(vec![hello.clone(), drain.clone(), drain.clone()], 1 << 20);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], hello);
        assert_eq!(
            frames[1],
            pb::WorkerMessage::batch(vec![drain.clone(), drain])
        );
    }
}
