//! Built-ins of Rhai's standard library replaced by versions bounded within one call.
//!
//! Rhai checks a value's size only after a native function returns, and looks at the
//! clock only between operations, so one built-in call runs to its end whatever it
//! costs: `s.replace("x", s)` on a 16,000-character string builds 256 MB before the
//! string limit refuses it. The versions here work out the size of their result
//! before allocating and refuse it with the error Rhai would have raised afterwards,
//! or, for a sort calling back into the script, stop at the first error and at the
//! deadline. Registered on the engine itself, they are found before the standard
//! package's functions of the same name and types. `docs/rules.md` lists them.

use std::cmp::Ordering;

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, FuncRegistration, ImmutableString,
    NativeCallContext, Position, INT,
};

use super::sandbox;

type FnResult<T> = Result<T, Box<EvalAltResult>>;

/// Registers every bounded built-in on `engine`, whose size limits they read.
pub(super) fn register(engine: &mut Engine) {
    register_replace(engine);
    register_pad(engine);
    register_split(engine);
    for name in ["sort", "sort_by"] {
        changing(name).register_into_engine(engine, sort_by);
    }
}

/// A built-in that changes its first argument. Not pure, as Rhai's are not, so that
/// calling it on a read-only input is an error rather than a change to the input.
fn changing(name: &str) -> FuncRegistration {
    FuncRegistration::new(name).with_purity(false)
}

/// A built-in that leaves its arguments alone and may be called on read-only inputs.
fn pure(name: &str) -> FuncRegistration {
    FuncRegistration::new(name).with_purity(true)
}

fn too_large(what: &str) -> Box<EvalAltResult> {
    EvalAltResult::ErrorDataTooLarge(what.into(), Position::NONE).into()
}

/// Refuses a string of `len` bytes (`None`: more than memory holds) over the limit.
fn string_fits(ctx: &NativeCallContext, len: Option<usize>) -> FnResult<()> {
    let max = ctx.engine().max_string_size();
    match len {
        Some(len) if max == 0 || len <= max => Ok(()),
        _ => Err(too_large("Length of string")),
    }
}

fn register_replace(engine: &mut Engine) {
    changing("replace").register_into_engine(engine, replace);
    changing("replace").register_into_engine(
        engine,
        |ctx: NativeCallContext, string: &mut ImmutableString, find: &str, with: char| {
            replace(ctx, string, find, with.encode_utf8(&mut [0; 4]))
        },
    );
    changing("replace").register_into_engine(
        engine,
        |ctx: NativeCallContext, string: &mut ImmutableString, find: char, with: &str| {
            replace(ctx, string, find.encode_utf8(&mut [0; 4]), with)
        },
    );
    changing("replace").register_into_engine(
        engine,
        |ctx: NativeCallContext, string: &mut ImmutableString, find: char, with: char| {
            let mut find_buf = [0; 4];
            replace(
                ctx,
                string,
                find.encode_utf8(&mut find_buf),
                with.encode_utf8(&mut [0; 4]),
            )
        },
    );
}

/// `string.replace(find, with)`, as Rhai's: every occurrence of `find` (an empty `find`
/// matches between characters) replaced; an empty string stays empty. The result's
/// length is counted first, without allocating.
fn replace(
    ctx: NativeCallContext,
    string: &mut ImmutableString,
    find: &str,
    with: &str,
) -> FnResult<()> {
    if string.is_empty() {
        return Ok(());
    }
    let count = string.matches(find).count();
    // Matches do not overlap, so they take at most the whole string.
    let kept = string.len() - count * find.len();
    let len = count
        .checked_mul(with.len())
        .and_then(|added| kept.checked_add(added));
    string_fits(&ctx, len)?;
    *string = string.replace(find, with).into();
    Ok(())
}

fn register_pad(engine: &mut Engine) {
    changing("pad").register_into_engine(
        engine,
        |ctx: NativeCallContext, string: &mut ImmutableString, len: INT, with: char| {
            pad(ctx, string, len, with.encode_utf8(&mut [0; 4]))
        },
    );
    changing("pad").register_into_engine(engine, pad);
}

/// `string.pad(len, with)`, as Rhai's: `with` repeated (the last copy cut short) until
/// the string has `len` characters; no change when it has that many already. Its
/// length in bytes is counted first (Rhai's counts characters, up to 4 bytes each).
/// An empty `with` changes nothing, where Rhai's loops forever.
fn pad(ctx: NativeCallContext, string: &mut ImmutableString, len: INT, with: &str) -> FnResult<()> {
    let Ok(len) = usize::try_from(len) else {
        return if len <= 0 {
            Ok(())
        } else {
            Err(too_large("Length of string"))
        };
    };
    let has = string.chars().count();
    let with_chars = with.chars().count();
    if len <= has || with_chars == 0 {
        return Ok(());
    }
    let missing = len - has;
    let (copies, rest) = (missing / with_chars, missing % with_chars);
    let rest = with
        .char_indices()
        .nth(rest)
        .map_or(with.len(), |(at, _)| at);
    let added = copies.checked_mul(with.len()).map(|bytes| bytes + rest);
    let len = added.and_then(|added| string.len().checked_add(added));
    string_fits(&ctx, len)?;
    let mut text = String::with_capacity(len.unwrap_or_default());
    text.push_str(string);
    // `repeat` copies by doubling, far faster than pushing one copy at a time.
    text.push_str(&with.repeat(copies));
    text.push_str(&with[..rest]);
    *string = text.into();
    Ok(())
}

fn register_split(engine: &mut Engine) {
    pure("to_chars").register_into_engine(engine, |ctx: NativeCallContext, s: &str| {
        pieces(&ctx, || s.chars())
    });
    pure("split").register_into_engine(
        engine,
        |ctx: NativeCallContext, s: &mut ImmutableString| {
            if s.is_empty() {
                return Ok(vec![s.clone().into()]);
            }
            pieces(&ctx, || s.split_whitespace())
        },
    );
    // The same four forms, `splitn` from the front and `rsplitn` from the back.
    macro_rules! by_delimiter {
        ($name:literal, $splitn:ident) => {
            for_each_delimiter!($name, $splitn, &str);
            for_each_delimiter!($name, $splitn, char);
        };
    }
    macro_rules! for_each_delimiter {
        ($name:literal, $splitn:ident, $at:ty) => {
            pure($name).register_into_engine(
                engine,
                |ctx: NativeCallContext, s: &mut ImmutableString, at: $at| {
                    split(ctx, s, None, |n| s.$splitn(n, at))
                },
            );
            pure($name).register_into_engine(
                engine,
                |ctx: NativeCallContext, s: &mut ImmutableString, at: $at, n: INT| {
                    split(ctx, s, Some(n), |n| s.$splitn(n, at))
                },
            );
        };
    }
    by_delimiter!("split", splitn);
    by_delimiter!("split_rev", rsplitn);
}

/// `split` and `split_rev` with a delimiter, as Rhai's: at most `segments` pieces
/// when given; an empty string, or `segments` of 1 or less, is one piece.
fn split<'s, I>(
    ctx: NativeCallContext,
    string: &'s ImmutableString,
    segments: Option<INT>,
    split_n: impl Fn(usize) -> I,
) -> FnResult<Array>
where
    I: Iterator<Item = &'s str>,
{
    if string.is_empty() || segments.is_some_and(|n| n <= 1) {
        return Ok(vec![string.clone().into()]);
    }
    let segments = segments.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    pieces(&ctx, || split_n(segments))
}

/// Collects `items` into an array, refusing first, without allocating, when there are
/// more than the array limit: a short string splits into many items of 16 bytes or
/// more each.
fn pieces<I, T>(ctx: &NativeCallContext, items: impl Fn() -> I) -> FnResult<Array>
where
    I: Iterator<Item = T>,
    T: Into<Dynamic>,
{
    let max = ctx.engine().max_array_size();
    if max > 0 && items().nth(max).is_some() {
        return Err(too_large("Size of array"));
    }
    Ok(items().map(Into::into).collect())
}

/// `array.sort(comparer)` and `array.sort_by(comparer)`, as Rhai's, except that an
/// error in the comparer (a limit, the deadline, a `throw`) stops the sort and is the
/// call's error. Rhai's ignores such errors and goes on calling the comparer, so a sort
/// of a large array ran on past the time limit. The deadline is also looked at before
/// each comparison.
fn sort_by(ctx: NativeCallContext, array: &mut Array, comparer: FnPtr) -> FnResult<()> {
    if array.len() <= 1 {
        return Ok(());
    }
    let mut failure = None;
    let mut compare = |x: &Dynamic, y: &Dynamic| {
        if failure.is_some() {
            return Ordering::Equal;
        }
        let verdict = sandbox::check_deadline()
            .and_then(|()| comparer.call_raw(&ctx, None, [x.clone(), y.clone()]));
        match verdict {
            Ok(v) => ordering(&v).unwrap_or_else(|| x.type_id().cmp(&y.type_id())),
            Err(err) => {
                failure = Some(err);
                Ordering::Equal
            }
        }
    };
    // `sort_by` may panic when the comparer is not a total order, as Rhai's notes.
    let sorted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        array.sort_by(&mut compare);
    }));
    if sorted.is_err() {
        return Err("error in comparer for sorting".into());
    }
    failure.map_or(Ok(()), Err)
}

/// A comparer's answer as Rhai reads it: an integer's sign, or `true` for "less".
fn ordering(value: &Dynamic) -> Option<Ordering> {
    match value.as_int() {
        Ok(n) => Some(n.cmp(&0)),
        Err(_) => value.as_bool().ok().map(|less| {
            if less {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }),
    }
}
