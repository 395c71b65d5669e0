//! couponsd: claims trigger requests from the database, decides with Rhai rules which
//! coupon a user gets, takes it from stock without overselling, and delivers it to the
//! partner's webhook, signed per the Standard Webhooks spec.
//!
//! The modules below are declared in the order data flows through the pipeline.

pub mod classify;
pub mod dispatch;
pub mod grant;
pub mod intake;
pub mod schedule;
pub mod select;

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod http;
pub mod in_force;
pub mod installation;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod authoring;
pub mod rules;
pub mod store;
