use super::*;

fn outgoing(n: i32, channel: &str, held_for: Duration) -> Outgoing {
    Outgoing {
        id: None,
        webhook_id: format!("msg_{n}"),
        channel: channel.into(),
        payload: "{}".into(),
        attempts: 0,
        hold_token: 7,
        held_until: Instant::now() + held_for,
    }
}

fn ids(taken: &[Outgoing]) -> Vec<&str> {
    taken.iter().map(|o| o.webhook_id.as_str()).collect()
}

#[test]
fn each_channel_has_its_own_queue_and_room() {
    let hour = Duration::from_secs(3600);
    let handoff = Handoff::new(2);
    handoff.push((0..2).map(|n| outgoing(n, "slow", hour)));
    handoff.push([outgoing(9, "fast", hour)]);
    assert!(!handoff.has_room("slow"), "full at capacity");
    assert!(
        handoff.has_room("fast"),
        "another channel's queue is its own"
    );
    handoff.mark_slow("fast");
    assert!(
        !handoff.has_room("fast"),
        "a slow partner's rows go to the outbox"
    );
    assert_eq!(ids(&handoff.take("fast", 5, Duration::ZERO)), ["msg_9"]);
    assert!(
        handoff.has_room("fast"),
        "until nothing of it waits any more"
    );
    assert_eq!(ids(&handoff.take("slow", 1, Duration::ZERO)), ["msg_0"]);
    assert_eq!(handoff.len(), 1);
    handoff.disable("slow");
    assert!(
        !handoff.has_room("slow"),
        "a disabled channel takes no hand-off"
    );
    assert_eq!(handoff.drop_channel("slow"), 1);
    assert!(handoff.is_empty());
}

#[test]
fn a_hold_too_short_for_an_attempt_is_left_to_the_outbox() {
    let handoff = Handoff::new(10);
    handoff.push([outgoing(1, "wallet", Duration::from_millis(100))]);
    handoff.push([outgoing(2, "wallet", Duration::from_secs(60))]);
    let taken = handoff.take("wallet", 10, Duration::from_secs(5));
    assert_eq!(
        ids(&taken),
        ["msg_2"],
        "msg_1's hold ends before a 5 s attempt could"
    );
    assert!(handoff.is_empty());
    assert!(
        !handoff.has_room("wallet"),
        "a hold nearly ran out: the partner is slow"
    );
}

#[test]
fn a_claim_takes_what_the_lane_sends_within_its_holds_up_to_a_batch() {
    let hour = Duration::from_secs(3600);
    let handoff = Handoff::new(4);
    assert_eq!(handoff.claim_limit("wallet", 1_000_000, 500), 500);
    assert_eq!(handoff.claim_limit("wallet", 3, 500), 3, "a slow lane");
    handoff.push((0..2).map(|n| outgoing(n, "wallet", hour)));
    assert_eq!(handoff.claim_limit("wallet", 3, 500), 1, "less what waits");
    assert_eq!(
        handoff.claim_limit("wallet", 1_000_000, 5),
        5,
        "the queue may hold its capacity and one batch"
    );
    handoff.push((2..6).map(|n| outgoing(n, "wallet", hour)));
    assert_eq!(handoff.claim_limit("wallet", 1_000_000, 5), 3);
    let mut claimed = outgoing(8, "wallet", hour);
    claimed.id = Some(8);
    handoff.push_front([claimed, outgoing(9, "wallet", hour)]);
    assert_eq!(
        ids(&handoff.take("wallet", 3, Duration::ZERO)),
        ["msg_8", "msg_9", "msg_0"],
        "claimed rows were due already: they go first, in their order"
    );
}

#[test]
fn polls_the_outbox_when_nothing_was_handed_off_or_the_interval_passed() {
    let handoff = Handoff::new(10);
    let interval = Duration::from_secs(3600);
    assert!(handoff.outbox_due("wallet", interval), "never polled yet");
    handoff.polled("wallet", false);
    assert!(!handoff.outbox_due("wallet", interval), "polled just now");
    assert!(
        handoff.outbox_due("sms", interval),
        "each channel has its own poll"
    );
    handoff.outbox_rows("wallet");
    assert!(
        handoff.outbox_due("wallet", interval),
        "a grant wrote rows due now"
    );
    handoff.polled("wallet", true);
    assert!(
        handoff.outbox_due("wallet", interval),
        "the claim came back full"
    );
    handoff.polled("wallet", false);
    assert!(!handoff.outbox_due("wallet", interval));
    assert!(
        handoff.outbox_due("wallet", Duration::ZERO),
        "interval passed"
    );
    handoff.read_disabled(["gone".to_owned()]);
    assert!(!handoff.disabled_due(interval));
    handoff.disable("wallet");
    let disabled = handoff.disabled();
    assert!(disabled.contains("gone") && disabled.contains("wallet"));
}
