//! The config in force while the daemon runs: a reload swaps its catalog.

use std::sync::{Arc, RwLock};

use super::Config;

/// The running config with the catalog (`campaigns`) of the last reload: the
/// start-up config with its campaigns replaced, swapped whole between batches.
#[derive(Clone)]
pub struct CatalogHandle(Arc<RwLock<Arc<Config>>>);

impl CatalogHandle {
    /// Wraps the start-up config.
    pub fn new(config: Arc<Config>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// The config whose campaigns are in force now.
    pub fn current(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `config`'s campaigns in force for every batch that starts from now on.
    pub fn swap(&self, config: Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}
