//! The hand-off: `coupon.granted` deliveries go from the grant transaction that wrote
//! them straight to this daemon's dispatcher, in memory, once that transaction commits.
//!
//! Their outbox rows are written due at `now + delivery lease` (see
//! [`crate::daemon::Context::delivery_lease`]), exactly as if this dispatcher had
//! claimed them, so no other dispatcher sends them meanwhile; if this daemon dies before
//! sending them they come due after the lease like any claimed delivery, and nothing is
//! lost. What it saves is the outbox claim of every dispatch round (a locking read, an
//! update of every row's due time and a commit) and the wait for the next round.
//!
//! The queue is bounded: when the partner is slower than the grants, the grant
//! transaction stops handing off and writes its rows due at once, for the outbox path.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::deliveries::{DueDelivery, NewDelivery};

/// A delivery to send, claimed from the outbox or handed off by a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The outbox row's id; `None` for a hand-off (its `webhook_id` finds the row).
    pub id: Option<i64>,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The channel.
    pub channel: String,
    /// The body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

impl From<DueDelivery> for Outgoing {
    fn from(d: DueDelivery) -> Self {
        Outgoing {
            id: Some(d.id),
            webhook_id: d.webhook_id,
            channel: d.channel,
            payload: d.payload,
            attempts: d.attempts,
        }
    }
}

impl From<NewDelivery> for Outgoing {
    fn from(d: NewDelivery) -> Self {
        Outgoing {
            id: None,
            webhook_id: d.webhook_id,
            channel: d.channel,
            payload: d.payload,
            attempts: 0,
        }
    }
}

/// The dispatcher's in-memory state: the hand-off queue, when the outbox was last
/// polled, and the disabled channels as of that poll.
#[derive(Debug)]
pub struct Handoff {
    queue: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    outbox: Mutex<OutboxPoll>,
}

#[derive(Debug)]
struct OutboxPoll {
    last: Option<Instant>,
    disabled: HashSet<String>,
}

impl Handoff {
    /// A hand-off that holds at most `capacity` deliveries.
    pub fn new(capacity: usize) -> Self {
        Handoff {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            outbox: Mutex::new(OutboxPoll {
                last: None,
                disabled: HashSet::new(),
            }),
        }
    }

    /// True while the queue has room: a grant that sees room writes its rows held for
    /// this daemon and hands them off after the commit.
    pub fn has_room(&self) -> bool {
        self.lock().len() < self.capacity
    }

    /// Deliveries waiting in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues the deliveries of a committed batch.
    pub fn push(&self, deliveries: impl IntoIterator<Item = Outgoing>) {
        self.lock().extend(deliveries);
    }

    /// Takes up to `max` deliveries, oldest first.
    pub fn take(&self, max: usize) -> Vec<Outgoing> {
        let mut queue = self.lock();
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// True when the outbox should be polled now: nothing waits in the hand-off, or
    /// the last poll is older than `interval` (retries, alerts and other daemons' rows
    /// are not starved by a steady stream of hand-offs).
    pub fn outbox_due(&self, nothing_handed_off: bool, interval: Duration) -> bool {
        let poll = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        nothing_handed_off || poll.last.is_none_or(|at| at.elapsed() >= interval)
    }

    /// Records an outbox poll and the disabled channels it read.
    pub fn polled(&self, disabled: impl IntoIterator<Item = String>) {
        let mut poll = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        poll.last = Some(Instant::now());
        poll.disabled = disabled.into_iter().collect();
    }

    /// Adds a channel this dispatcher just disabled (a 410).
    pub fn disable(&self, channel: &str) {
        let mut poll = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        poll.disabled.insert(channel.to_owned());
    }

    /// The disabled channels as of the last poll (and this dispatcher's own 410s).
    pub fn disabled(&self) -> HashSet<String> {
        let poll = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        poll.disabled.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(n: i32) -> Outgoing {
        Outgoing {
            id: None,
            webhook_id: format!("msg_{n}"),
            channel: "wallet".into(),
            payload: "{}".into(),
            attempts: 0,
        }
    }

    #[test]
    fn takes_oldest_first_and_reports_room() {
        let handoff = Handoff::new(3);
        assert!(handoff.has_room());
        handoff.push((0..3).map(outgoing));
        assert!(!handoff.has_room(), "full at capacity");
        let taken = handoff.take(2);
        assert_eq!(taken, vec![outgoing(0), outgoing(1)]);
        assert!(handoff.has_room());
        assert_eq!(handoff.take(10), vec![outgoing(2)]);
        assert!(handoff.is_empty());
    }

    #[test]
    fn polls_the_outbox_when_nothing_was_handed_off_or_the_interval_passed() {
        let handoff = Handoff::new(10);
        let interval = Duration::from_secs(3600);
        assert!(handoff.outbox_due(false, interval), "never polled yet");
        handoff.polled(["gone".to_owned()]);
        assert!(
            !handoff.outbox_due(false, interval),
            "hand-offs to send, polled just now"
        );
        assert!(handoff.outbox_due(true, interval), "nothing handed off");
        assert!(handoff.outbox_due(false, Duration::ZERO), "interval passed");
        handoff.disable("wallet");
        let disabled = handoff.disabled();
        assert!(disabled.contains("gone") && disabled.contains("wallet"));
    }
}
