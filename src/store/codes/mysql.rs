//! The two `coupon_codes` statements of the grant step that diesel's query builder
//! cannot say on MySQL: the draw with its index named, and the issue of a batch's pool
//! codes in one `UPDATE`.

use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};

/// The draw: `draw_codes`'s query with its index named.
pub(super) struct Draw<'a> {
    pub(super) coupon_id: &'a str,
    pub(super) after: i64,
    pub(super) count: i64,
    pub(super) skip_locked: bool,
}

impl QueryFragment<Mysql> for Draw<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql(
            "SELECT id, code FROM coupon_codes FORCE INDEX (ix_coupon_codes_pool) \
             WHERE coupon_id = ",
        );
        out.push_bind_param::<Text, _>(self.coupon_id)?;
        out.push_sql(" AND id > ");
        out.push_bind_param::<BigInt, _>(&self.after)?;
        out.push_sql(" AND grant_id IS NULL ORDER BY id LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.count)?;
        out.push_sql(match self.skip_locked {
            true => " FOR UPDATE SKIP LOCKED",
            false => " FOR UPDATE",
        });
        Ok(())
    }
}

impl QueryId for Draw<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Draw<'_> {
    type SqlType = (BigInt, Text);
}

/// Issues pool rows to their grants, all at `issued_at`, in one statement:
///
/// ```sql
/// UPDATE coupon_codes SET issued_at = ?, grant_id = CASE id WHEN ? THEN ? … END
/// WHERE grant_id IS NULL AND id IN (?, …)
/// ```
///
/// `rows` (row id, grant id) are padded to a power of two by repeating the last pair,
/// which changes nothing (the first `WHEN` that matches wins, an `IN` list ignores a
/// repeat), so that the statement takes one of a few shapes the cache keeps. With
/// CLIENT_FOUND_ROWS it counts the rows it matched: one per distinct id that is in the
/// pool and not yet issued.
pub(super) struct Issue {
    pub(super) issued_at: Option<NaiveDateTime>,
    pub(super) rows: Vec<(i64, Option<i64>)>,
}

impl QueryFragment<Mysql> for Issue {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("UPDATE coupon_codes SET issued_at = ");
        out.push_bind_param::<Nullable<Timestamp>, _>(&self.issued_at)?;
        out.push_sql(", grant_id = CASE id");
        for (id, grant_id) in &self.rows {
            out.push_sql(" WHEN ");
            out.push_bind_param::<BigInt, _>(id)?;
            out.push_sql(" THEN ");
            out.push_bind_param::<Nullable<BigInt>, _>(grant_id)?;
        }
        out.push_sql(" END WHERE grant_id IS NULL AND id IN (");
        for (i, (id, _)) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_bind_param::<BigInt, _>(id)?;
        }
        out.push_sql(")");
        Ok(())
    }
}

impl QueryId for Issue {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}
