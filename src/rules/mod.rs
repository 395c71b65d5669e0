//! Rule scripts: the two Rhai programs ops write (`user_type.rhai`,
//! `select_coupon.rhai`), compiled once when loaded and evaluated in a sandbox with
//! limits always on. A script error is a defined outcome for its request, never a panic.
//!
//! `sandbox` builds the engine and maps Rhai's errors, `bounded` replaces the standard
//! built-ins that one call could make run long or large, `functions` holds the helpers
//! scripts may call, `inputs` builds the values scripts see.

mod bounded;
mod functions;
mod inputs;
mod sandbox;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rhai::{Dynamic, Engine, ImmutableString, Scope, AST};
use sha2::{Digest, Sha256};

pub use functions::NEVER;

use crate::config::RuleLimits;
use crate::domain::{
    CampaignView, CouponId, CouponView, History, RulesVersion, TriggerRequest, UserType,
};

/// The file, under the rules folder, that decides a user's type.
pub const USER_TYPE_FILE: &str = "user_type.rhai";
/// The file, under the rules folder, that picks a coupon of a campaign's chain.
pub const SELECT_COUPON_FILE: &str = "select_coupon.rhai";

/// Where the time helpers (`now()`, `days_since`, `hours_since`) read the time from.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock, [`Utc::now`].
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

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

/// Rule problems one per line, each `file:line:column: message`: how an error that
/// carries several reads as text.
pub fn one_per_line(problems: &[RuleError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One compiled script and the file it came from.
struct Script {
    file: PathBuf,
    ast: AST,
    /// SHA-256 of the text, lowercase hex.
    digest: String,
}

impl Script {
    /// Reads and compiles `file`; `inputs` are the names the script is given, so that
    /// any other free variable is refused here rather than read as `()` at run time.
    fn load(engine: &Engine, file: PathBuf, inputs: &[&str]) -> Result<Self, RuleError> {
        let text = std::fs::read_to_string(&file).map_err(|err| {
            RuleError::at(&file, rhai::Position::NONE, format!("cannot read: {err}"))
        })?;
        let mut names = Scope::new();
        for name in inputs {
            // Plain variables, not constants: a constant would be folded into the AST.
            names.push(*name, ());
        }
        let mut ast = engine
            .compile_with_scope(&names, &text)
            .map_err(|err| sandbox::parse_error(&file, &err))?;
        ast.set_source(file.display().to_string());
        Ok(Self {
            digest: hex(&Sha256::digest(text.as_bytes())),
            file,
            ast,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The compiled rule set, shared by all workers.
pub struct Rules {
    version: RulesVersion,
    engine: Engine,
    limits: RuleLimits,
    user_type: Script,
    select_coupon: Script,
}

impl Rules {
    /// Loads and compiles `user_type.rhai` and `select_coupon.rhai` from `dir`.
    /// Every problem found is returned, not only the first.
    pub fn load(dir: &Path, limits: &RuleLimits) -> Result<Rules, Vec<RuleError>> {
        Self::load_with_clock(dir, limits, system_clock())
    }

    /// [`Rules::load`], with the time helpers reading `clock` (for tests and
    /// simulations that need a fixed "now").
    pub fn load_with_clock(
        dir: &Path,
        limits: &RuleLimits,
        clock: Clock,
    ) -> Result<Rules, Vec<RuleError>> {
        let limits = &sandbox::within_max_memory(limits);
        let engine = sandbox::engine(limits, clock);
        let user_type = Script::load(&engine, dir.join(USER_TYPE_FILE), &["request", "history"]);
        let select_coupon = Script::load(
            &engine,
            dir.join(SELECT_COUPON_FILE),
            &["request", "user_type", "campaign", "coupons"],
        );
        let (user_type, select_coupon) = match (user_type, select_coupon) {
            (Ok(user_type), Ok(select_coupon)) => (user_type, select_coupon),
            (user_type, select_coupon) => {
                return Err([user_type.err(), select_coupon.err()]
                    .into_iter()
                    .flatten()
                    .collect())
            }
        };
        Ok(Rules {
            version: version(&user_type, &select_coupon),
            engine,
            limits: limits.clone(),
            user_type,
            select_coupon,
        })
    }

    /// Digest of the two scripts' text.
    ///
    /// The first 16 hex digits of the SHA-256 of `sha256sum`'s listing of the two files,
    /// so ops can check it in the rules folder with
    /// `sha256sum user_type.rhai select_coupon.rhai | sha256sum | cut -c1-16`.
    /// Hashing per file first means moving text from one file to the other changes it.
    pub fn version(&self) -> &RulesVersion {
        &self.version
    }

    /// Runs `user_type.rhai`.
    pub fn user_type(
        &self,
        request: &TriggerRequest,
        history: &History,
    ) -> Result<UserType, RuleError> {
        let mut scope = Scope::new();
        scope.push_constant("request", inputs::request(request));
        scope.push_constant("history", inputs::history(history));
        let value = self.run(&self.user_type, &mut scope)?;
        let file = &self.user_type.file;
        let wrong = |why: String| RuleError::at(file, rhai::Position::NONE, why);
        if !value.is_string() {
            return Err(wrong(format!(
                "must return a string user type, got {}",
                show(&value)
            )));
        }
        let text = value.into_immutable_string().unwrap_or_default();
        UserType::parse(&text).map_err(|err| {
            wrong(format!(
                "must return a string user type, got {text:?} ({err})"
            ))
        })
    }

    /// Runs `select_coupon.rhai`; `None` means not eligible.
    pub fn select_coupon(
        &self,
        request: &TriggerRequest,
        user_type: &UserType,
        campaign: &CampaignView,
        coupons: &[CouponView],
    ) -> Result<Option<CouponId>, RuleError> {
        let mut scope = Scope::new();
        scope.push_constant("request", inputs::request(request));
        scope.push_constant(
            "user_type",
            Dynamic::from(ImmutableString::from(user_type.as_str())),
        );
        scope.push_constant("campaign", inputs::campaign(campaign));
        scope.push_constant("coupons", inputs::coupons(coupons));
        let value = self.run(&self.select_coupon, &mut scope)?;
        let file = &self.select_coupon.file;
        let wrong = |why: String| RuleError::at(file, rhai::Position::NONE, why);
        if value.is_unit() {
            return Ok(None);
        }
        if !value.is_string() {
            return Err(wrong(format!(
                "must return a coupon id string or (), got {}",
                show(&value)
            )));
        }
        let id = value.into_immutable_string().unwrap_or_default();
        match coupons
            .iter()
            .find(|coupon| coupon.id.as_str() == id.as_str())
        {
            Some(coupon) => Ok(Some(coupon.id.clone())),
            None => {
                let known: Vec<&str> = coupons.iter().map(|coupon| coupon.id.as_str()).collect();
                Err(wrong(format!(
                    "returned unknown coupon {id:?}; campaign {} offers {known:?}",
                    campaign.id
                )))
            }
        }
    }

    /// Evaluates `script` under this thread's deadline of `max_time`.
    fn run(&self, script: &Script, scope: &mut Scope) -> Result<Dynamic, RuleError> {
        let _deadline = sandbox::Deadline::start(self.limits.max_time);
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, &script.ast)
            .map_err(|err| sandbox::eval_error(&script.file, &err, &self.limits))
    }
}

fn version(user_type: &Script, select_coupon: &Script) -> RulesVersion {
    let listing = format!(
        "{}  {USER_TYPE_FILE}\n{}  {SELECT_COUPON_FILE}\n",
        user_type.digest, select_coupon.digest
    );
    let mut digest = hex(&Sha256::digest(listing.as_bytes()));
    digest.truncate(16);
    RulesVersion(digest)
}

/// A returned value for an error message: its text, cut short, and its type.
fn show(value: &Dynamic) -> String {
    if value.is_unit() {
        return "()".to_owned();
    }
    let mut text = format!("{value:?}");
    if let Some((cut, _)) = text.char_indices().nth(60) {
        text.truncate(cut);
        text.push('…');
    }
    format!("{text} ({})", value.type_name())
}
