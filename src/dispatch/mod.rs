//! Dispatch: the outbox worker. Claims due deliveries, signs them per the Standard
//! Webhooks spec, sends them, and records each attempt: delivered, retry at a time, or
//! dead.

pub mod backoff;
pub mod events;
pub mod send;
pub mod signing;
pub mod worker;
