//! schedule stage.
