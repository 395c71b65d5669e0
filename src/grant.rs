//! grant stage.
