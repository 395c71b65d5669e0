//! The lanes: per channel, the sends in flight (each its own task), the pace of its
//! attempts, and the results a failed record left for the next round.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::store::deliveries::AttemptRecord;

/// The sends in flight, per channel.
#[derive(Debug, Default)]
pub struct Lanes {
    pub(super) sends: tokio::sync::Mutex<JoinSet<Sent>>,
    lanes: Mutex<HashMap<String, Lane>>,
    /// Wakes the dispatcher when a send ends and its sender is free again.
    pub(super) freed: tokio::sync::Notify,
    /// Results whose record failed (the database was unreachable, locked or slow):
    /// recorded with the next round's, while their holds last.
    unrecorded: Mutex<Vec<Sent>>,
}

/// A sender of a lane, freed when its send ends (even by a panic, which took no time
/// worth counting: `took` stays `None`).
pub(super) struct Sender<'a> {
    pub(super) lanes: &'a Lanes,
    pub(super) channel: String,
    pub(super) took: Option<Duration>,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        self.lanes.done(&self.channel, self.took);
        self.lanes.freed.notify_one();
    }
}

/// One channel's lane.
#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    /// A moving average of its attempts' durations; `None` before the first.
    pace: Option<Duration>,
}

impl Lanes {
    pub(super) fn in_flight(&self, channel: &str) -> usize {
        self.lanes().get(channel).map_or(0, |lane| lane.in_flight)
    }

    pub(super) fn add(&self, channel: &str, n: usize) {
        self.lanes()
            .entry(channel.to_owned())
            .or_default()
            .in_flight += n;
    }

    fn done(&self, channel: &str, took: Option<Duration>) {
        let mut lanes = self.lanes();
        let lane = lanes.entry(channel.to_owned()).or_default();
        lane.in_flight = lane.in_flight.saturating_sub(1);
        // Each attempt weighs a fifth: a partner that slows down shows within a few.
        if let Some(took) = took {
            lane.pace = Some(lane.pace.map_or(took, |pace| (pace * 4 + took) / 5));
        }
    }

    /// How many deliveries `channel`'s lane of `concurrency` senders is expected to
    /// start within `window`, at half its pace so far (0 before its first attempt): what
    /// a claim may take beyond the free senders, so that no claimed delivery waits in
    /// memory until its hold is too short to send it.
    pub(super) fn sendable_within(
        &self,
        channel: &str,
        concurrency: usize,
        window: Duration,
    ) -> usize {
        let pace = self.lanes().get(channel).and_then(|lane| lane.pace);
        let Some(pace) = pace else { return 0 };
        let per_sender = window.as_secs_f64() / pace.as_secs_f64().max(0.000_1);
        (per_sender * concurrency as f64 / 2.0).min(u32::MAX as f64) as usize
    }

    pub(super) fn keep_unrecorded(&self, sent: Vec<Sent>) {
        let mut kept = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        kept.extend(sent);
    }

    pub(super) fn take_unrecorded(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A finished send: its record and, for a 410, the channel to disable.
#[derive(Debug)]
pub(super) struct Sent {
    pub(super) record: AttemptRecord,
    pub(super) channel: String,
    pub(super) gone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_expects_to_send_at_half_its_pace_within_a_window() {
        let lanes = Lanes::default();
        let window = Duration::from_secs(1);
        assert_eq!(lanes.sendable_within("wallet", 2, window), 0, "no pace yet");
        lanes.add("wallet", 2);
        lanes.done("wallet", Some(Duration::from_millis(900)));
        assert_eq!(lanes.in_flight("wallet"), 1);
        // Two senders, 0.9 s a send: 2.2 in a second, half of it expected.
        assert_eq!(lanes.sendable_within("wallet", 2, window), 1);
        lanes.done("wallet", Some(Duration::from_millis(10)));
        // The average moves a fifth of the way: (4 × 900 + 10) / 5 = 722 ms.
        assert_eq!(lanes.sendable_within("wallet", 64, window), 44);
        assert_eq!(lanes.in_flight("wallet"), 0);
        lanes.done("wallet", None);
        assert_eq!(lanes.in_flight("wallet"), 0, "never below zero");
        assert_eq!(
            lanes.sendable_within("wallet", 64, window),
            44,
            "a send that panicked does not count"
        );
    }
}
