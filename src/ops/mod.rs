//! Commands for operators that inspect or change a running installation: stock, and
//! the outbox (deliveries, channels).

pub mod deliveries;
pub mod stock;
