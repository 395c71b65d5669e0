//! select stage.
