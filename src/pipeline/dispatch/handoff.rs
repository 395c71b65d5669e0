//! The hand-off: `coupon.granted` deliveries go from the grant transaction that wrote
//! them straight to this daemon's dispatcher, in memory, once that transaction commits.
//!
//! Their outbox rows are written due at `now + delivery lease` (see
//! [`crate::config::Config::delivery_lease`]) under the batch's hold token, exactly as
//! if this dispatcher had claimed them, so no other dispatcher sends them meanwhile; if
//! this daemon dies before sending them they come due after the lease like any claimed
//! delivery, and nothing is lost. What it saves is the outbox claim (a locking read, an
//! update of every row's hold and a commit) and the wait for the next poll.
//!
//! Each channel has its own bounded queue, which also holds the rows its lane claimed
//! from the outbox ahead of its senders (see [`Handoff::claim_limit`]). A channel whose
//! queue is full, whose senders were too slow for the holds (see [`Handoff::take`]), or
//! which is disabled takes no hand-offs: the grant writes its rows due at once, for the
//! outbox path, so a slow partner never holds rows it cannot send before their hold runs
//! out. A delivery whose hold no longer has a whole attempt left in it is not sent from
//! memory either (see [`Handoff::take`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::deliveries::{DueDelivery, NewDelivery};

/// A delivery to send, claimed from the outbox or handed off by a grant, with the hold
/// it is sent under.
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
    /// The row's `hold_token`: the attempt's result is recorded only under it.
    pub hold_token: i64,
    /// When the hold ends, on this host's monotonic clock. A delivery is sent only
    /// while a whole attempt fits in what is left of it; after that another dispatcher
    /// may claim it.
    pub held_until: Instant,
}

impl Outgoing {
    /// A delivery this dispatcher claimed under `hold_token` until `held_until`.
    pub fn claimed(d: DueDelivery, hold_token: i64, held_until: Instant) -> Self {
        Outgoing {
            id: Some(d.id),
            webhook_id: d.webhook_id,
            channel: d.channel,
            payload: d.payload,
            attempts: d.attempts,
            hold_token,
            held_until,
        }
    }

    /// A delivery a grant wrote held for this daemon (`None` for a row written due for
    /// any dispatcher, which is not handed off).
    pub fn handed_off(d: NewDelivery, held_until: Instant) -> Option<Self> {
        Some(Outgoing {
            hold_token: d.hold_token?,
            id: None,
            webhook_id: d.webhook_id,
            channel: d.channel,
            payload: d.payload,
            attempts: 0,
            held_until,
        })
    }
}

/// The dispatcher's in-memory state: one hand-off queue per channel, the channels
/// whose partners are too slow for hand-offs, when the outbox was last polled, and the disabled
/// channels as of that poll.
#[derive(Debug)]
pub struct Handoff {
    queues: Mutex<HashMap<String, VecDeque<Outgoing>>>,
    capacity: usize,
    lanes: Mutex<Lanes>,
}

#[derive(Debug, Default)]
struct Lanes {
    last_poll: HashMap<String, Instant>,
    /// Channels whose outbox may hold due rows now: a grant wrote rows due at once, or
    /// the last claim came back full.
    waiting: HashSet<String>,
    disabled_read: Option<Instant>,
    disabled: HashSet<String>,
    /// Channels whose hand-offs waited so long that their holds nearly ran out: the
    /// partner is slower than the grants, so new rows go to the outbox until the queue
    /// is empty again.
    slow: HashSet<String>,
}

impl Handoff {
    /// A hand-off that holds at most `capacity` deliveries per channel.
    pub fn new(capacity: usize) -> Self {
        Handoff {
            queues: Mutex::new(HashMap::new()),
            capacity,
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// True while `channel` can take hand-offs: its queue has room, its senders are
    /// not too slow for their holds and it is not disabled. A grant writes the rows of such channels
    /// held for this daemon and hands them off after the commit; the others are due
    /// at once, for the outbox path, so a slow channel never holds rows it cannot send.
    pub fn has_room(&self, channel: &str) -> bool {
        {
            let lanes = self.lanes();
            if lanes.slow.contains(channel) || lanes.disabled.contains(channel) {
                return false;
            }
        }
        self.queued(channel) < self.capacity
    }

    /// Deliveries waiting in memory, all channels.
    pub fn len(&self) -> usize {
        self.queues().values().map(VecDeque::len).sum()
    }

    /// Deliveries of `channel` waiting in memory.
    pub fn queued(&self, channel: &str) -> usize {
        self.queues().get(channel).map_or(0, VecDeque::len)
    }

    /// True when nothing waits in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues the deliveries of a committed batch.
    pub fn push(&self, deliveries: impl IntoIterator<Item = Outgoing>) {
        let mut queues = self.queues();
        for d in deliveries {
            queues.entry(d.channel.clone()).or_default().push_back(d);
        }
    }

    /// Queues claimed deliveries of one channel ahead of what waits: they were due
    /// already.
    pub fn push_front(&self, claimed: impl IntoIterator<Item = Outgoing>) {
        let claimed: Vec<Outgoing> = claimed.into_iter().collect();
        let mut queues = self.queues();
        for d in claimed.into_iter().rev() {
            queues.entry(d.channel.clone()).or_default().push_front(d);
        }
    }

    /// How many due rows of `channel` a claim may take: what its lane is expected to
    /// send while their holds last (`sendable`) less what already waits for it, at most
    /// `batch`, and never so many that its queue grows beyond the hand-off's capacity
    /// and one batch.
    pub fn claim_limit(&self, channel: &str, sendable: usize, batch: usize) -> usize {
        let queued = self.queued(channel);
        let bound = (self.capacity + batch).saturating_sub(queued);
        sendable.saturating_sub(queued).min(batch).min(bound)
    }

    /// Takes up to `max` deliveries of `channel`, oldest first, leaving out those whose
    /// hold no longer has `attempt` left in it: they stay in the outbox, where they come
    /// due when the hold ends.
    pub fn take(&self, channel: &str, max: usize, attempt: Duration) -> Vec<Outgoing> {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(channel) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut taken = Vec::new();
        let mut late = false;
        while taken.len() < max {
            let Some(d) = queue.pop_front() else { break };
            let left = d.held_until.saturating_duration_since(now);
            late |= left <= attempt.saturating_mul(2);
            if left > attempt {
                taken.push(d);
            }
        }
        let empty = queue.is_empty();
        drop(queues);
        if late {
            self.mark_slow(channel);
        } else if empty {
            self.lanes().slow.remove(channel);
        }
        taken
    }

    /// Stops handing off `channel` until its queue is empty again: its partner is slower
    /// than the grants (a hand-off waited until its hold nearly ran out).
    pub fn mark_slow(&self, channel: &str) {
        self.lanes().slow.insert(channel.to_owned());
    }

    /// Forgets what waits for `channel` (it was disabled: the rows stay pending in the
    /// outbox, held until it is enabled).
    pub fn drop_channel(&self, channel: &str) -> usize {
        self.queues().remove(channel).map_or(0, |q| q.len())
    }

    /// True when the outbox should be polled for `channel` now: rows due at once may
    /// wait there (see [`Handoff::outbox_rows`]), or its last poll is older than
    /// `interval` (retries, alerts and other daemons' expired holds come due by time).
    pub fn outbox_due(&self, channel: &str, interval: Duration) -> bool {
        self.lanes().waiting.contains(channel) || self.poll_overdue(channel, interval)
    }

    /// True when `channel`'s outbox was last polled `interval` ago or longer.
    pub fn poll_overdue(&self, channel: &str, interval: Duration) -> bool {
        self.lanes()
            .last_poll
            .get(channel)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// A grant committed rows of `channel` due at once (not handed off), or a claim
    /// came back full: poll its outbox as soon as a sender is free.
    pub fn outbox_rows(&self, channel: &str) {
        self.lanes().waiting.insert(channel.to_owned());
    }

    /// Records a poll of `channel`'s outbox; `full` when it claimed all it asked for.
    pub fn polled(&self, channel: &str, full: bool) {
        let mut lanes = self.lanes();
        lanes.last_poll.insert(channel.to_owned(), Instant::now());
        if full {
            lanes.waiting.insert(channel.to_owned());
        } else {
            lanes.waiting.remove(channel);
        }
    }

    /// Records the disabled channels as just read from the database.
    pub fn read_disabled(&self, disabled: impl IntoIterator<Item = String>) {
        let mut lanes = self.lanes();
        lanes.disabled_read = Some(Instant::now());
        lanes.disabled = disabled.into_iter().collect();
    }

    /// True when the disabled channels were last read longer than `interval` ago.
    pub fn disabled_due(&self, interval: Duration) -> bool {
        self.lanes()
            .disabled_read
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// Adds a channel this dispatcher just disabled (a 410).
    pub fn disable(&self, channel: &str) {
        self.lanes().disabled.insert(channel.to_owned());
    }

    /// The disabled channels as last read (and this dispatcher's own 410s).
    pub fn disabled(&self) -> HashSet<String> {
        self.lanes().disabled.clone()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Outgoing>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
