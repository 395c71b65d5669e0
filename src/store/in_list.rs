//! `column IN (?, …)` that the connection's statement cache can keep prepared.
//!
//! diesel's `eq_any` renders one bind per value and marks the statement unsafe to cache,
//! so every batch prepared, executed and closed each of its `IN` statements: a round
//! trip and a parse on the server each time (about 9% of MariaDB's time in the steady
//! benchmark, see BENCHMARKS.md). [`in_list`] pads the list to the next power of two by
//! repeating its last value, which changes no result, so a statement's text takes one of
//! a dozen shapes and each is prepared once per connection.

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::serialize::ToSql;
use diesel::sql_types::{Bool, HasSqlType};

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
    fn sizes_are_powers_of_two() {
        let sizes: Vec<usize> = [1, 2, 3, 5, 200, 1000].map(padded_len).to_vec();
        assert_eq!(sizes, [1, 2, 4, 8, 256, 1024]);
    }
}
