//! Integration tests: real MariaDB (a fresh database per test), real SQLite, real HTTP
//! receivers on 127.0.0.1:0.

mod support;

mod authoring;
mod claims;
mod cli;
mod codes;
mod codes_authoring;
mod codes_import;
mod codes_inventory;
mod delivery;
mod hostile;
mod inventory;
mod lifecycle_updates;
mod lifecycle_jobs;
mod listener;
mod operations;
mod partners;
mod periodic;
mod pipeline;
mod schema;
mod stalls;
mod store;
mod tls;
