//! Dispatch: the outbox worker. Takes the deliveries its daemon's grants hand off and
//! claims due ones from the outbox, signs them per the Standard Webhooks spec, sends
//! them, and records each attempt: delivered, retry at a time, or dead.

pub mod backoff;
pub mod events;
pub mod handoff;
pub mod send;
pub mod signing;
pub mod worker;
