//! couponsd: claims trigger requests from the database, decides with Rhai rules which
//! coupon a user gets, takes it from stock without overselling, and delivers it to the
//! partner's webhook, signed per the Standard Webhooks spec.
//!
//! The modules below are declared from the bottom up, in the order data flows: the
//! domain's types, the config, the rules and the store; the pipeline's stages
//! (`pipeline`: intake → decide → grant → dispatch) and the scheduled jobs around them;
//! then what runs them and what operators use (the commands, and the console the
//! runtime serves on its health listener).

#![forbid(unsafe_code)]

pub mod domain;
pub mod config;
pub mod in_force;
pub mod rules;
pub mod store;
pub mod pipeline;
pub mod schedule;
pub mod metrics;
pub mod runtime;
pub mod api;
pub mod installation;
pub mod app;
pub mod authoring;
pub mod ops;
pub mod init;
pub mod console;
pub mod demo;
pub mod cli;
pub mod logging;
