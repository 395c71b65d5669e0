//! Rule scripts: the two Rhai programs ops write (`user_type.rhai`,
//! `select_coupon.rhai`), compiled once when loaded and evaluated in a sandbox with
//! limits always on. A script error is a defined outcome for its request, never a panic.

use std::path::{Path, PathBuf};

use crate::config::RuleLimits;
use crate::domain::{
    CampaignView, CouponId, CouponView, History, RulesVersion, TriggerRequest, UserType,
};

/// A rule failed to load or to evaluate; the message names the file and line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RuleError {
    /// The rule file (`rules/user_type.rhai`).
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

/// The compiled rule set, shared by all workers.
pub struct Rules {
    version: RulesVersion,
}

impl Rules {
    /// Loads and compiles `user_type.rhai` and `select_coupon.rhai` from `dir`.
    /// Every problem found is returned, not only the first.
    pub fn load(_dir: &Path, _limits: &RuleLimits) -> Result<Rules, Vec<RuleError>> {
        todo!("rules")
    }

    /// Digest of the two scripts' text.
    pub fn version(&self) -> &RulesVersion {
        &self.version
    }

    /// Runs `user_type.rhai`.
    pub fn user_type(
        &self,
        _request: &TriggerRequest,
        _history: &History,
    ) -> Result<UserType, RuleError> {
        todo!("rules")
    }

    /// Runs `select_coupon.rhai`; `None` means not eligible.
    pub fn select_coupon(
        &self,
        _request: &TriggerRequest,
        _user_type: &UserType,
        _campaign: &CampaignView,
        _coupons: &[CouponView],
    ) -> Result<Option<CouponId>, RuleError> {
        todo!("rules")
    }
}
