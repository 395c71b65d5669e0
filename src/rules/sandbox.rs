//! The sandbox every rule runs in: one Rhai `Engine` with its limits always on, a
//! wall-clock deadline per evaluation, no `eval`, no modules, and `print`/`debug` sent
//! to tracing. Also turns Rhai's errors into `RuleError`s that name the file, the line
//! and, when a limit was hit, the limit and its config key.

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, EvalAltResult, Map, ParseError, ParseErrorType, Position, Scope};

use super::{bounded, functions, Clock, RuleError};
use crate::config::RuleLimits;

/// Deepest expression nesting at the top level and inside functions. `RuleLimits` has
/// no key for it because no sane rule comes near; it only stops a parser blow-up.
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FUNCTION_EXPR_DEPTH: usize = 32;

/// How many operations run between two looks at the clock: reading it costs about as
/// much as a few operations, so every 1024th keeps the cost negligible, while 1024
/// operations take tens of microseconds, so a runaway script still stops close to its
/// deadline. (A single built-in call runs to its end; see `bounded` for those that
/// could run long or large.)
const CLOCK_CHECK_EVERY: u64 = 1024;

/// The value `on_progress` terminates a script with when its time is up, so that the
/// error can be told apart from any other termination.
const TIME_IS_UP: &str = "couponsd: rule time limit";

thread_local! {
    /// The deadline of the evaluation running on this thread. Rhai cannot be
    /// interrupted from outside, and an evaluation never leaves its thread, so the
    /// progress callback (shared by all threads) reads the deadline from here.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets this thread's evaluation deadline; dropping it restores the previous one.
pub(super) struct Deadline {
    previous: Option<Instant>,
}

impl Deadline {
    /// Starts the clock for one evaluation that may last `max_time`.
    pub(super) fn start(max_time: Duration) -> Self {
        // `checked_add` so that an absurd `max_time` means "no deadline", not a panic.
        let deadline = Instant::now().checked_add(max_time);
        Self {
            previous: DEADLINE.with(|cell| cell.replace(deadline)),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        DEADLINE.with(|cell| cell.set(self.previous));
    }
}

fn time_is_up() -> bool {
    DEADLINE
        .with(Cell::get)
        .is_some_and(|deadline| Instant::now() >= deadline)
}

fn stop_when_time_is_up(operations: u64) -> Option<Dynamic> {
    (operations % CLOCK_CHECK_EVERY == 0 && time_is_up()).then(|| TIME_IS_UP.into())
}

/// The error that ends an evaluation whose deadline has passed, for built-ins that
/// loop without Rhai's operations count looking at the clock for them.
pub(super) fn check_deadline() -> Result<(), Box<EvalAltResult>> {
    if time_is_up() {
        return Err(EvalAltResult::ErrorTerminated(TIME_IS_UP.into(), Position::NONE).into());
    }
    Ok(())
}

/// `limits` with the string, array and map limits lowered to what `max_memory`
/// allows, for limits built in code; config validation refuses larger ones.
pub(super) fn within_max_memory(limits: &RuleLimits) -> RuleLimits {
    RuleLimits {
        max_string_size: limits.max_string_size.min(limits.string_size_cap()),
        max_array_size: limits.max_array_size.min(limits.item_count_cap()),
        max_map_size: limits.max_map_size.min(limits.item_count_cap()),
        ..limits.clone()
    }
}

/// Builds the one engine all rules run on, with every limit of `limits` on.
///
/// Rhai reads a limit of 0 as "unlimited"; config validation is expected to refuse 0.
pub(super) fn engine(limits: &RuleLimits, clock: Clock) -> Engine {
    // `new_raw` rather than `new`: no file module resolver and no stdout printing.
    let max_map_size = limits.max_map_size;
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    #[allow(deprecated)]
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        // A misspelt input (`histroy`) is refused at load, not read as `()` per request.
        .set_strict_variables(true)
        .disable_symbol("eval")
        // With no module resolver an `import` could only fail at run time; refusing the
        // keyword reports it at load, with its line.
        .disable_symbol("import")
        .on_progress(stop_when_time_is_up)
        // See `refuse_oversized_map`. Rhai marks `on_var` volatile (not deprecated).
        .on_var(move |name, index, context| {
            refuse_oversized_map(context.scope(), name, index, max_map_size).map(|()| None)
        })
        .on_print(|text| tracing::debug!(target: "couponsd::rules", "print: {text}"))
        .on_debug(|text, source, pos| {
            tracing::debug!(
                target: "couponsd::rules",
                "debug: {text} ({}:{})",
                source.unwrap_or("rule"),
                pos
            );
        });
    functions::register(&mut engine, clock);
    bounded::register(&mut engine);
    engine
}

/// Rhai checks `max_map_size` when a map is built, merged or returned, but not when
/// `m[key] = value` adds a key to a map held in a variable. Every such insertion reads
/// the variable first, so checking here closes the gap for a map held directly in a
/// variable; a map nested inside another value is still bounded by the operations and
/// time limits. Only the entry count is read, so the check costs nanoseconds; the
/// inputs are constants that cannot grow, and are skipped.
fn refuse_oversized_map(
    scope: &Scope,
    name: &str,
    index: usize,
    max: usize,
) -> Result<(), Box<EvalAltResult>> {
    if max == 0 {
        return Ok(());
    }
    // `iter_raw` runs from the newest variable back, the order Rhai resolves names in;
    // `index` counts from the newest too (1 is the newest), 0 meaning "search by name".
    let entry = match index {
        0 => scope.iter_raw().find(|(n, ..)| *n == name),
        _ => scope.iter_raw().nth(index - 1),
    };
    let Some((_, false, value)) = entry else {
        return Ok(());
    };
    match value.read_lock::<Map>() {
        Some(map) if map.len() > max => Err(EvalAltResult::ErrorDataTooLarge(
            "Size of object map".into(),
            Position::NONE,
        )
        .into()),
        _ => Ok(()),
    }
}

impl RuleError {
    /// An error at Rhai position `pos` (line and column 0 when it has none).
    pub(super) fn at(file: &Path, pos: Position, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: pos.line().unwrap_or(0),
            column: pos.position().unwrap_or(0),
            message: message.into(),
        }
    }
}

/// A compile error of `file`.
pub(super) fn parse_error(file: &Path, err: &ParseError) -> RuleError {
    let ParseError(kind, pos) = err;
    let message = match kind.as_ref() {
        ParseErrorType::ExprTooDeep => format!(
            "expression nested too deeply (limit {MAX_EXPR_DEPTH}, {MAX_FUNCTION_EXPR_DEPTH} inside a function)"
        ),
        kind => kind.to_string(),
    };
    RuleError::at(file, *pos, message)
}

/// A run-time error of `file`: the innermost cause, where it happened, and the
/// function it happened in.
pub(super) fn eval_error(file: &Path, err: &EvalAltResult, limits: &RuleLimits) -> RuleError {
    let mut cause = err;
    let mut pos = err.position();
    let mut function = None;
    loop {
        cause = match cause {
            EvalAltResult::ErrorInFunctionCall(name, _, inner, _) => {
                function = Some(name);
                inner
            }
            EvalAltResult::ErrorInModule(_, inner, _) => inner,
            _ => break,
        };
        if !cause.position().is_none() {
            pos = cause.position();
        }
    }
    let mut message = describe(cause, limits);
    if let Some(name) = function {
        message.push_str(&format!(" (in function `{name}`)"));
    }
    RuleError::at(file, pos, message)
}

fn describe(cause: &EvalAltResult, limits: &RuleLimits) -> String {
    match cause {
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "too many operations (limit {}, rules.limits.max_operations)",
            limits.max_operations
        ),
        EvalAltResult::ErrorStackOverflow(_) => format!(
            "call depth exceeded (limit {}, rules.limits.max_call_depth)",
            limits.max_call_depth
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) if what.contains("string") => format!(
            "string too large (limit {} bytes, rules.limits.max_string_size)",
            limits.max_string_size
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) if what.contains("array") => format!(
            "array too large (limit {} items, rules.limits.max_array_size)",
            limits.max_array_size
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) if what.contains("map") => format!(
            "map too large (limit {} entries, rules.limits.max_map_size)",
            limits.max_map_size
        ),
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == TIME_IS_UP => format!(
            "exceeded the time limit of {} (rules.limits.max_time)",
            humantime::format_duration(limits.max_time)
        ),
        other => {
            // Rhai's text ends with " (line L, position C)"; the RuleError says it once.
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
        }
    }
}
