//! The pipeline, in the order a request goes through it:
//!
//! 1. [`intake`]: claimed rows, read as bytes, become [`TriggerRequest`]s or named
//!    rejections;
//! 2. [`decide`]: pure and synchronous — classify the user (`user_type.rhai`, with the
//!    histories of [`classify`]), pick the campaign, check window, limit, coupon rule,
//!    chain stock and budget;
//! 3. [`grant`]: the unit of work — claim, one transaction, record;
//! 4. [`lifecycle`]: after delivery, partner updates (redeem, unredeem, revoke) applied
//!    to the grants, with their events and what a revocation gives back;
//! 5. [`dispatch`]: deliver the outbox, signed, with retries.
//!
//! [`TriggerRequest`]: crate::domain::TriggerRequest

pub mod intake;
pub mod classify;
pub mod refusal;
pub mod decide;
pub mod grant;
pub mod lifecycle;
pub mod dispatch;
