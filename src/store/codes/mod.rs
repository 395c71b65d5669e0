//! `coupon_codes`: the codes users redeem. A pool coupon's codes are imported
//! (`import.rs`) and drawn by the grant step, which takes as much of the coupon's
//! stock in the same transaction, so that its `remaining` equals its unissued codes at
//! every commit; a generated code is written
//! at its grant, where the unique key on `code` refuses one that repeats any code ever
//! issued or imported.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::prepared::{padded_chunks, Cached, MAX_CHUNK};
use super::schema::coupon_codes::dsl as k;
use super::schema::coupon_codes::table;
use super::schema::coupons::dsl as c;
use super::{Conn, QueryResult};

pub mod import;
mod mysql;

/// A code issued to a grant: drawn from a pool (with its row id) or generated (no id).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = super::schema::coupon_codes, treat_none_as_default_value = false)]
pub struct IssuedCode {
    /// The pool row, or `None` for a generated code (the database assigns one).
    #[diesel(skip_insertion)]
    pub id: Option<i64>,
    /// Its coupon.
    pub coupon_id: String,
    /// The code.
    pub code: String,
    /// The grant it is issued to.
    pub grant_id: Option<i64>,
    /// When it was issued.
    pub issued_at: Option<NaiveDateTime>,
}

/// A coupon's codes: not yet issued, and issued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeCounts {
    /// Imported and not yet issued: a pool coupon's stock.
    pub available: i64,
    /// Issued to a grant (drawn from the pool, or generated).
    pub issued: i64,
}

/// True when `error` is a duplicate key (a generated code that already exists).
pub fn is_duplicate(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Operations on `coupon_codes`.
impl Conn {
    /// Inside the caller's transaction: the first `count` unissued codes of a pool
    /// coupon whose id is over `after`, locked until the commit. With `skip_locked`,
    /// rows other transactions hold are passed over (fewer come back when they hold the
    /// rest); without, the draw waits for them. (SQLite, with its one writer, has no row
    /// locks.) The draw walks the coupon's codes in id order from `after`, issued ones
    /// included (issuing a code does not move its index entry): the caller starts it
    /// where it last drew.
    pub async fn draw_codes(
        &mut self,
        coupon_id: &str,
        (after, count): (i64, i64),
        skip_locked: bool,
    ) -> QueryResult<Vec<(i64, String)>> {
        let query = table
            .filter(k::coupon_id.eq(coupon_id))
            .filter(k::id.gt(after))
            .filter(k::grant_id.is_null())
            .order(k::id)
            .limit(count)
            .select((k::id, k::code));
        match self {
            // MariaDB's planner, left alone, may walk the primary key for `ORDER BY id`
            // (or intersect the grant_id index), locking its way past every issued
            // code: the draw names its index.
            Conn::Mysql(conn) => {
                let draw = mysql::Draw {
                    coupon_id,
                    after,
                    count,
                    skip_locked,
                };
                diesel_async::RunQueryDsl::load(Cached(draw), &mut **conn).await
            }
            Conn::Sqlite(_) => self.load(Cached(query)).await,
        }
    }

    /// Marks drawn pool codes issued to their grants: on MySQL one `UPDATE` per
    /// padded chunk of codes issued at the same time (`mysql::Issue`); on SQLite, with
    /// its one writer, one update per code on the wrapped connection. A row already
    /// issued, or an id the pool does not hold, fails it (`NotFound`): the caller's
    /// transaction rolls back.
    pub async fn issue_pool_codes(&mut self, codes: &[IssuedCode]) -> QueryResult<()> {
        let rows: Vec<(i64, Option<i64>, Option<NaiveDateTime>)> = codes
            .iter()
            .filter_map(|c| Some((c.id?, c.grant_id, c.issued_at)))
            .collect();
        match self {
            Conn::Mysql(conn) => {
                for same_time in rows.chunk_by(|a, b| a.2 == b.2) {
                    let pairs: Vec<(i64, Option<i64>)> = same_time
                        .iter()
                        .map(|&(id, grant, _)| (id, grant))
                        .collect();
                    for (chunk, padded) in pairs.chunks(MAX_CHUNK).zip(padded_chunks(&pairs)) {
                        let issue = mysql::Issue {
                            issued_at: same_time[0].2,
                            rows: padded,
                        };
                        let matched =
                            diesel_async::RunQueryDsl::execute(Cached(issue), &mut **conn).await?;
                        if matched != chunk.len() {
                            return Err(DieselError::NotFound);
                        }
                    }
                }
                Ok(())
            }
            Conn::Sqlite(conn) => {
                conn.spawn_blocking(move |sync| {
                    for (id, grant_id, issued_at) in rows {
                        let issue = diesel::update(
                            table.filter(k::id.eq(id)).filter(k::grant_id.is_null()),
                        )
                        .set((k::grant_id.eq(grant_id), k::issued_at.eq(issued_at)));
                        if diesel::RunQueryDsl::execute(issue, sync)? != 1 {
                            return Err(DieselError::NotFound);
                        }
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// Writes generated codes with their grants. A code that exists already (issued
    /// or imported before, under any coupon) fails the statement with a duplicate key
    /// ([`is_duplicate`]) and writes nothing: the caller draws new codes.
    pub async fn insert_generated_codes(&mut self, codes: &[IssuedCode]) -> QueryResult<usize> {
        self.insert_all::<_, IssuedCode>(table, codes).await
    }

    /// Available and issued codes of each coupon that has any, by coupon id.
    pub async fn code_counts(&mut self) -> QueryResult<Vec<(String, CodeCounts)>> {
        let query = table
            .group_by(k::coupon_id)
            .select((
                k::coupon_id,
                diesel::dsl::count_star(),
                diesel::dsl::count(k::grant_id),
            ))
            .order(k::coupon_id);
        let rows: Vec<(String, i64, i64)> = self.load(query).await?;
        Ok(rows
            .into_iter()
            .map(|(id, all, issued)| {
                let counts = CodeCounts {
                    available: all - issued,
                    issued,
                };
                (id, counts)
            })
            .collect())
    }

    /// Inside the caller's write transaction: sets a pool coupon's `remaining` (and its
    /// `stock`, which is granted + remaining) to its unissued codes, under its row lock.
    /// Returns the `remaining` it had and the one it has now, or `None` for an unknown
    /// coupon.
    pub async fn true_up_pool(&mut self, coupon_id: &str) -> QueryResult<Option<(i64, i64)>> {
        let lock = super::schema::coupons::table
            .filter(c::id.eq(coupon_id))
            .select((c::remaining, c::granted));
        let rows: Vec<(i64, i64)> = self.load_either(lock.for_update(), lock).await?;
        let Some((before, granted)) = rows.first().copied() else {
            return Ok(None);
        };
        let count = table
            .filter(k::coupon_id.eq(coupon_id))
            .filter(k::grant_id.is_null())
            .count();
        let available: i64 = self.get_result(count).await?;
        let set = diesel::update(super::schema::coupons::table.filter(c::id.eq(coupon_id)))
            .set((c::remaining.eq(available), c::stock.eq(granted + available)));
        self.execute(set).await?;
        Ok(Some((before, available)))
    }
}
