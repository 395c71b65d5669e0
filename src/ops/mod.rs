//! Commands for operators that inspect or change a running installation: stock.

pub mod stock;
