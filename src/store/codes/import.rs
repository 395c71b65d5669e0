//! `codes import`: a partner's codes streamed into a pool coupon, one chunk per
//! transaction. A chunk takes the coupon's row lock first (the grant step takes it
//! after drawing codes, which skips the chunk's uncommitted rows), inserts the
//! codes `coupon_codes` does not hold yet under any coupon, and raises the coupon's
//! stock and remaining by exactly as many, so that a pool coupon's remaining equals its
//! unissued codes at every commit.

use std::collections::HashSet;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::super::prepared::in_list;
use super::super::schema::coupon_codes::dsl as k;
use super::super::schema::coupon_codes::table;
use super::super::schema::coupons::dsl as c;
use super::super::{Conn, QueryResult};
use super::CodeCounts;

/// The most codes one `IN` list asks about: the list is padded to a power of two, so
/// the lookups of a chunk take at most a dozen statement shapes, each kept prepared.
const LOOKUP_CHUNK: usize = 1024;

/// An imported code as written: unissued, with the time of its import.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = super::super::schema::coupon_codes)]
struct ImportedCode {
    coupon_id: String,
    code: String,
    imported_at: NaiveDateTime,
}

/// A coupon's stock as its row holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStock {
    /// `stock`: granted + remaining.
    pub stock: i64,
    /// `remaining`: for a pool coupon, its unissued codes.
    pub remaining: i64,
}

/// What one chunk's transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkImport {
    /// The codes written, and added to the coupon's stock.
    pub imported: usize,
    /// The chunk's codes `coupon_codes` held already (under any coupon): not written.
    pub present: HashSet<String>,
    /// The coupon's stock after the chunk, as committed.
    pub after: PoolStock,
}

/// The store operations of `codes import` and `codes show`.
impl Conn {
    /// The coupon's stock and remaining (no lock), or `None` when the coupon has no row.
    pub async fn pool_stock(&mut self, coupon_id: &str) -> QueryResult<Option<PoolStock>> {
        let query = super::super::schema::coupons::table
            .filter(c::id.eq(coupon_id))
            .select((c::stock, c::remaining));
        let rows: Vec<(i64, i64)> = self.load(query).await?;
        Ok(rows
            .first()
            .map(|&(stock, remaining)| PoolStock { stock, remaining }))
    }

    /// Inside the caller's transaction: the coupon's stock, its row locked on MySQL
    /// (SQLite's write transaction already holds its one writer), or `None` when the
    /// coupon has no row.
    async fn lock_pool(&mut self, coupon_id: &str) -> QueryResult<Option<PoolStock>> {
        let query = super::super::schema::coupons::table
            .filter(c::id.eq(coupon_id))
            .select((c::stock, c::remaining));
        let rows: Vec<(i64, i64)> = self.load_either(query.for_update(), query).await?;
        Ok(rows
            .first()
            .map(|&(stock, remaining)| PoolStock { stock, remaining }))
    }

    /// Which of `codes` `coupon_codes` holds, under any coupon: one `SELECT … IN` per
    /// [`LOOKUP_CHUNK`] codes, served by the unique key on `code`.
    pub async fn present_codes(&mut self, codes: &[String]) -> QueryResult<HashSet<String>> {
        let mut present = HashSet::new();
        for chunk in codes.chunks(LOOKUP_CHUNK) {
            let query = table
                .filter(in_list(k::code, chunk.iter().map(String::as_str)))
                .select(k::code);
            let found: Vec<String> = self.load(query).await?;
            present.extend(found);
        }
        Ok(present)
    }

    /// Imports one chunk of distinct codes into a pool coupon in one write transaction:
    /// the coupon's row locked, the codes already present found, the others inserted,
    /// and the coupon's stock and remaining raised by exactly the number inserted.
    /// `None` (nothing written) when the coupon has no row. A code another importer
    /// wrote after the lookup fails the insert on the unique key and rolls the whole
    /// chunk back (`super::is_duplicate`): the caller tries the chunk again.
    pub async fn import_chunk(
        &mut self,
        coupon_id: &str,
        codes: &[String],
        now: NaiveDateTime,
    ) -> QueryResult<Option<ChunkImport>> {
        self.write_transaction(async |conn| {
            let Some(before) = conn.lock_pool(coupon_id).await? else {
                return Ok(None);
            };
            let present = conn.present_codes(codes).await?;
            let rows: Vec<ImportedCode> = codes
                .iter()
                .filter(|code| !present.contains(*code))
                .map(|code| ImportedCode {
                    coupon_id: coupon_id.to_owned(),
                    code: code.clone(),
                    imported_at: now,
                })
                .collect();
            let imported = conn.insert_all::<_, ImportedCode>(table, &rows).await?;
            if imported > 0 && !conn.add_stock(coupon_id, imported as i64).await? {
                // The row locked above is gone: only a hand-made delete can do that.
                return Err(diesel::result::Error::NotFound);
            }
            let after = PoolStock {
                stock: before.stock + imported as i64,
                remaining: before.remaining + imported as i64,
            };
            Ok(Some(ChunkImport {
                imported,
                present,
                after,
            }))
        })
        .await
    }

    /// One coupon's available (imported, unissued) and issued codes, counted on the
    /// draw index's prefix.
    pub async fn code_counts_of(&mut self, coupon_id: &str) -> QueryResult<CodeCounts> {
        let query = table
            .filter(k::coupon_id.eq(coupon_id))
            .select((diesel::dsl::count_star(), diesel::dsl::count(k::grant_id)));
        let (all, issued): (i64, i64) = self.get_result(query).await?;
        Ok(CodeCounts {
            available: all - issued,
            issued,
        })
    }
}
