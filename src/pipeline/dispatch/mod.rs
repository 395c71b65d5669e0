//! Dispatch: the outbox worker. Takes the deliveries its daemon's grants hand off and
//! claims due ones from the outbox, signs them per the Standard Webhooks spec, sends
//! them, and records each attempt: delivered, retry at a time, or dead.

mod attempt;
pub mod backoff;
pub mod events;
pub mod handoff;
pub mod lanes;
pub mod send;
pub mod signing;
pub mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::{Heartbeat, Metrics};
use crate::store::Db;

/// What the dispatcher uses, built by the runtime.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Db,
    /// The start-up config (channels, `dispatch.*`, `worker.*`).
    pub config: Arc<Config>,
    /// The webhook client.
    pub sender: send::Sender,
    /// Deliveries handed from committed grants to this daemon's dispatcher.
    pub handoff: Arc<handoff::Handoff>,
    /// The sends in flight, per channel.
    pub lanes: Arc<lanes::Lanes>,
    /// Signalled when a batch committed new outbox rows.
    pub outbox_ready: Arc<Notify>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// The dispatcher's heartbeat, beaten after every attempt.
    pub heartbeat: Arc<Heartbeat>,
}
