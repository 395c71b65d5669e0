//! Statements the connection's statement cache can keep prepared.
//!
//! diesel prepares, executes and closes every statement it cannot cache: any `IN` list
//! (`eq_any` renders one bind per value) and every `UPDATE`. On MySQL a prepare is a
//! round trip, a parse, and one column definition sent back and decoded per `?` (256
//! for an `IN` list of a full batch): about 9% of MariaDB's time and the largest single
//! item of the daemon's allocations in the steady benchmark (BENCHMARKS.md).
//!
//! [`in_list`] pads a list to the next power of two by repeating its last value, which
//! changes no result, so a statement's text takes one of a dozen shapes; [`Cached`]
//! lets such a statement (an `UPDATE` with an `in_list` filter) be cached by its text.
//! [`case_of`] gives each row of such an `UPDATE` its own value in one statement.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, TypedExpressionType, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::serialize::ToSql;
use diesel::sql_types::{Bool, HasSqlType, SqlType};

/// A statement cached by its SQL text even where diesel would not cache it (an
/// `UPDATE`). Only for statements whose text takes a bounded number of shapes: fixed
/// columns, `in_list` filters, no optional parts.
#[derive(Debug, Clone)]
pub struct Cached<Q>(pub Q);

impl<Q, DB> QueryFragment<DB> for Cached<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        // The cache key is the SQL text (no static query id), so a cached statement
        // is only ever reused for the same text.
        Ok(true)
    }
}

impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// A cached `SELECT` loads what the statement it wraps loads.
impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// `column IN (values…)`, padded; an empty list is false.
#[derive(Debug, Clone)]
pub struct InList<C, T> {
    column: C,
    values: Vec<T>,
}

/// `column IN (values…)` with the list padded to a power of two (see the module docs).
pub fn in_list<C, T>(column: C, values: impl IntoIterator<Item = T>) -> InList<C, T> {
    InList {
        column,
        values: values.into_iter().collect(),
    }
}

/// The largest chunk [`pow2_chunks`] makes. Every cached statement keeps a column
/// definition per `?` on both ends of the connection; a cap bounds that memory (a
/// 512-row chunk of grants alone holds 5,120 of them).
pub const MAX_CHUNK: usize = 128;

/// Splits `rows` into chunks whose lengths are powers of two, largest first, at most
/// [`MAX_CHUNK`] (200 rows: 128, 64, 8), so that a multi-row statement per chunk takes
/// one of eight shapes.
pub fn pow2_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = (1 << rows.len().ilog2()).min(MAX_CHUNK);
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// Splits `rows` into chunks of at most [`MAX_CHUNK`], each padded to a power of two by
/// repeating its last row (200 rows: 128, then 72 padded to 128), for a statement in
/// which a repeated row changes nothing: one statement per [`MAX_CHUNK`] rows, each of
/// eight shapes. Empty for no rows.
pub fn padded_chunks<T: Copy>(rows: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    rows.chunks(MAX_CHUNK).map(|chunk| {
        let last = chunk[chunk.len() - 1];
        let mut padded = chunk.to_vec();
        padded.resize(chunk.len().next_power_of_two(), last);
        padded
    })
}

/// How many binds a list of `n` values is rendered with.
fn padded_len(n: usize) -> usize {
    n.next_power_of_two()
}

impl<C: Expression, T> Expression for InList<C, T> {
    type SqlType = Bool;
}

impl<C, T, QS> AppearsOnTable<QS> for InList<C, T>
where
    C: AppearsOnTable<QS>,
    Self: Expression,
{
}

impl<C, T, GB> ValidGrouping<GB> for InList<C, T>
where
    C: ValidGrouping<GB>,
{
    type IsAggregate = C::IsAggregate;
}

impl<C, T> QueryId for InList<C, T> {
    type QueryId = ();
    // No static id: the statement cache keys it by its SQL text, which the padding
    // keeps to a few shapes.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, T, DB> QueryFragment<DB> for InList<C, T>
where
    DB: Backend + HasSqlType<C::SqlType>,
    C: Expression + QueryFragment<DB>,
    T: ToSql<C::SqlType, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let Some(last) = self.values.last() else {
            out.push_sql("1 = 0");
            return Ok(());
        };
        self.column.walk_ast(out.reborrow())?;
        out.push_sql(" IN (");
        for i in 0..padded_len(self.values.len()) {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_bind_param::<C::SqlType, T>(self.values.get(i).unwrap_or(last))?;
        }
        out.push_sql(")");
        Ok(())
    }
}

/// `CASE column WHEN ? THEN ? … END`, of SQL type `ST`: each key's own value.
#[derive(Debug, Clone)]
pub struct CaseOf<C, K, V, ST> {
    column: C,
    pairs: Vec<(K, V)>,
    value_type: PhantomData<ST>,
}

/// `CASE column WHEN key THEN value … END` over `pairs`, for an `UPDATE` that sets a
/// different value on each row it filters by key (`in_list` of the same keys): one
/// statement where one per distinct value would be sent. Callers pad `pairs` (as
/// [`padded_chunks`] does: a repeated pair changes nothing, the first `WHEN` that
/// matches wins) to keep the text to a few shapes. No pairs render `NULL`.
pub fn case_of<ST, C, K, V>(column: C, pairs: Vec<(K, V)>) -> CaseOf<C, K, V, ST> {
    CaseOf {
        column,
        pairs,
        value_type: PhantomData,
    }
}

impl<C, K, V, ST: SqlType + TypedExpressionType> Expression for CaseOf<C, K, V, ST> {
    type SqlType = ST;
}

impl<C, K, V, ST, QS> AppearsOnTable<QS> for CaseOf<C, K, V, ST>
where
    C: AppearsOnTable<QS>,
    Self: Expression,
{
}

impl<C, K, V, ST, GB> ValidGrouping<GB> for CaseOf<C, K, V, ST>
where
    C: ValidGrouping<GB>,
{
    type IsAggregate = C::IsAggregate;
}

impl<C, K, V, ST> QueryId for CaseOf<C, K, V, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, K, V, ST, DB> QueryFragment<DB> for CaseOf<C, K, V, ST>
where
    DB: Backend + HasSqlType<C::SqlType> + HasSqlType<ST>,
    C: Expression + QueryFragment<DB>,
    K: ToSql<C::SqlType, DB>,
    V: ToSql<ST, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if self.pairs.is_empty() {
            out.push_sql("NULL");
            return Ok(());
        }
        out.push_sql("CASE ");
        self.column.walk_ast(out.reborrow())?;
        for (key, value) in &self.pairs {
            out.push_sql(" WHEN ");
            out.push_bind_param::<C::SqlType, K>(key)?;
            out.push_sql(" THEN ");
            out.push_bind_param::<ST, V>(value)?;
        }
        out.push_sql(" END");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use diesel::mysql::Mysql;
    use diesel::prelude::*;
    use diesel::query_builder::QueryFragment;

    use super::*;
    use crate::store::schema::trigger_requests::dsl as tr;

    fn sql<Q: QueryFragment<Mysql>>(q: &Q) -> String {
        diesel::debug_query::<Mysql, _>(q).to_string()
    }

    #[test]
    fn pads_to_a_power_of_two_with_the_last_value() {
        let q = tr::trigger_requests
            .filter(in_list(tr::id, [1_i64, 2, 3]))
            .select(tr::id);
        let text = sql(&q);
        assert!(text.contains("IN (?, ?, ?, ?)"), "{text}");
        assert!(text.ends_with("binds: [1, 2, 3, 3]"), "{text}");
    }

    #[test]
    fn an_empty_list_matches_nothing() {
        let q = tr::trigger_requests
            .filter(in_list(tr::id, Vec::<i64>::new()))
            .select(tr::id);
        assert!(sql(&q).contains("WHERE 1 = 0"), "{}", sql(&q));
    }

    #[test]
    fn is_safe_to_cache() {
        let q = tr::trigger_requests
            .filter(in_list(tr::id, [1_i64, 2]))
            .select(tr::id);
        assert!(QueryFragment::<Mysql>::is_safe_to_cache_prepared(&q, &Mysql).unwrap());
        let eq_any = tr::trigger_requests
            .filter(tr::id.eq_any([1_i64, 2]))
            .select(tr::id);
        assert!(!QueryFragment::<Mysql>::is_safe_to_cache_prepared(&eq_any, &Mysql).unwrap());
    }

    #[test]
    fn a_cached_update_is_safe_to_cache() {
        let update = diesel::update(tr::trigger_requests.filter(in_list(tr::id, [1_i64])))
            .set(tr::status.eq("done"));
        assert!(!QueryFragment::<Mysql>::is_safe_to_cache_prepared(&update, &Mysql).unwrap());
        let cached = Cached(update);
        assert!(QueryFragment::<Mysql>::is_safe_to_cache_prepared(&cached, &Mysql).unwrap());
        assert!(
            sql(&cached).starts_with("UPDATE `trigger_requests` SET `status` = ?"),
            "{}",
            sql(&cached)
        );
    }

    #[test]
    fn case_of_gives_each_key_its_value() {
        use diesel::sql_types::{Nullable, Text};
        let values = case_of::<Nullable<Text>, _, _, _>(tr::id, vec![(1_i64, "a"), (2, "b")]);
        let update = diesel::update(tr::trigger_requests.filter(in_list(tr::id, [1_i64, 2])))
            .set(tr::detail.eq(values));
        let text = sql(&update);
        assert!(
            text.starts_with(
                "UPDATE `trigger_requests` SET `detail` = CASE `trigger_requests`.`id` WHEN ? THEN ? WHEN ? THEN ? END WHERE"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("binds: [1, \"a\", 2, \"b\", 1, 2]"),
            "{text}"
        );
        let none = case_of::<Nullable<Text>, _, i64, &str>(tr::id, vec![]);
        let text = sql(&diesel::update(tr::trigger_requests).set(tr::detail.eq(none)));
        assert!(text.contains("SET `detail` = NULL"), "{text}");
    }

    #[test]
    fn chunks_are_powers_of_two_largest_first_and_capped() {
        let rows: Vec<u32> = (0..200).collect();
        let sizes: Vec<usize> = pow2_chunks(&rows).map(<[u32]>::len).collect();
        assert_eq!(sizes, [128, 64, 8]);
        let joined: Vec<u32> = pow2_chunks(&rows).flatten().copied().collect();
        assert_eq!(joined, rows, "every row once, in order");
        assert_eq!(pow2_chunks::<u32>(&[]).count(), 0);
        let many: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = pow2_chunks(&many).map(<[u32]>::len).collect();
        assert_eq!(sizes, [128, 128, 32, 8, 4], "capped at {MAX_CHUNK}");
    }

    #[test]
    fn padded_chunks_repeat_the_last_row_up_to_a_power_of_two() {
        let rows: Vec<u32> = (0..200).collect();
        let chunks: Vec<Vec<u32>> = padded_chunks(&rows).collect();
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [128, 128]);
        assert_eq!(chunks[0], (0..128).collect::<Vec<_>>());
        assert_eq!(chunks[1][..72], (128..200).collect::<Vec<_>>()[..]);
        assert!(chunks[1][72..].iter().all(|&r| r == 199), "{:?}", chunks[1]);
        assert_eq!(padded_chunks::<u32>(&[]).count(), 0);
        let three: Vec<Vec<u32>> = padded_chunks(&[7, 8, 9]).collect();
        assert_eq!(three, [vec![7, 8, 9, 9]]);
    }

    #[test]
    fn sizes_are_powers_of_two() {
        let sizes: Vec<usize> = [1, 2, 3, 5, 200, 1000].map(padded_len).to_vec();
        assert_eq!(sizes, [1, 2, 4, 8, 256, 1024]);
    }
}
