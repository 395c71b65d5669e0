//! The `couponsd` command line.
fn main() {}
