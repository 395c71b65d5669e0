//! Integration tests: real MariaDB (a fresh database per test), real SQLite, real HTTP
//! receivers on 127.0.0.1:0.

mod support;

mod api;
mod authoring;
mod claims;
mod cli;
mod codes;
mod codes_authoring;
mod codes_import;
mod codes_inventory;
mod contrib;
mod console;
mod console_browser;
mod delivery;
mod hostile;
mod init;
mod inventory;
mod lifecycle_updates;
mod lifecycle_jobs;
mod listener;
mod openapi;
mod operations;
mod partners;
mod periodic;
mod pipeline;
mod schema;
mod stalls;
mod store;
mod tls;
