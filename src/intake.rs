//! intake stage.
