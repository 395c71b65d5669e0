//! Store: all SQL.
