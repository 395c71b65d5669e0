//! What a running daemon has in force and a reload swaps whole: the compiled rules
//! (`InForce<Rules>`) and the config whose catalog is current (`InForce<Config>`).
//!
//! A module of its own, below the daemon and the reload that share it: hot reload
//! (`authoring::reload`) swaps what the daemon's stages read without naming the daemon.

use std::sync::{Arc, RwLock};

/// A value in force: readers take the current one and keep it as long as they need it
/// (a batch reads the rules once, when it starts); a swap puts the next one in force for
/// every reader that comes after. Cheap to clone; clones share the value.
pub struct InForce<T>(Arc<RwLock<Arc<T>>>);

impl<T> InForce<T> {
    /// Puts `value` in force.
    pub fn new(value: impl Into<Arc<T>>) -> Self {
        Self(Arc::new(RwLock::new(value.into())))
    }

    /// The value in force now.
    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `value` in force for every reader that comes from now on.
    pub fn swap(&self, value: impl Into<Arc<T>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value.into();
    }
}

// Not derived: a derive would ask for `T: Clone`, and only the `Arc` is cloned.
impl<T> Clone for InForce<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}
