//! couponsd: claims trigger requests from the database, decides with Rhai rules which
//! coupon a user gets, takes it from stock without overselling, and delivers it to the
//! partner's webhook, signed per the Standard Webhooks spec.
//!
//! The modules below are declared in the order data flows through the pipeline.

pub mod intake;
pub mod classify;
pub mod select;
pub mod grant;
pub mod dispatch;
pub mod schedule;

pub mod store;
pub mod rules;
pub mod config;
pub mod domain;
