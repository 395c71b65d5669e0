//! The shipped rules and their tests, built into the binary from the source tree's
//! `rules/`: `couponsd init` writes them, the demo and the benchmark run them. A test
//! (`init::tests`) fails when a file is added to `rules/` and not here.

/// `rules/user_type.rhai`.
pub const USER_TYPE: &str = include_str!("../../rules/user_type.rhai");
/// `rules/select_coupon.rhai`.
pub const SELECT_COUPON: &str = include_str!("../../rules/select_coupon.rhai");
/// `rules/tests/shipped.yaml`: the rule tests, written for the starter's campaigns and
/// `couponsd.example.yaml`'s.
pub const TESTS: &str = include_str!("../../rules/tests/shipped.yaml");

/// Every shipped file, by its path under the installation's folder.
pub const FILES: &[(&str, &str)] = &[
    ("rules/user_type.rhai", USER_TYPE),
    ("rules/select_coupon.rhai", SELECT_COUPON),
    ("rules/tests/shipped.yaml", TESTS),
];
