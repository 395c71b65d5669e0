//! The demo's partners after delivery: updates written into `grant_updates` as a
//! partner writes them, drained by the daemon, then counted and reported.

use crate::app::AppError;
use crate::runtime;
use crate::store::StoreError;

/// What the partners report after delivery, written as they write it (plain SQL into
/// `grant_updates`): every fifth grant redeemed, every fiftieth other one revoked (its
/// unit goes back to the coupon), and one code no grant holds (rejected).
pub(super) async fn partner_updates(ctx: &runtime::Daemon) -> Result<(), AppError> {
    let conn = &mut ctx.db.get().await?;
    for sql in [
        "INSERT INTO grant_updates (update_key, grant_id, action, reason) \
         SELECT 'paid-' || id, id, 'redeem', 'order paid' FROM grants WHERE id % 5 = 0",
        "INSERT INTO grant_updates (update_key, grant_id, action, reason) \
         SELECT 'fraud-' || id, id, 'revoke', 'fraud check' FROM grants WHERE id % 50 = 1",
        "INSERT INTO grant_updates (update_key, code, action) \
         VALUES ('typo-1', 'NO-SUCH-CODE', 'redeem')",
    ] {
        conn.execute(diesel::sql_query(sql))
            .await
            .map_err(StoreError::from)?;
    }
    Ok(())
}

/// The partners' updates by status, and `couponsd report`'s table.
pub(super) async fn report(ctx: &runtime::Daemon) -> Result<(), AppError> {
    let conn = &mut ctx.db.get().await?;
    let by_status = conn.count_updates().await.map_err(StoreError::from)?;
    let report = conn.report(None).await.map_err(StoreError::from)?;
    println!(
        "
partner updates (grant_updates)"
    );
    for (status, n) in by_status {
        println!("  {status:<10} {n:>6}");
    }
    println!(
        "
couponsd report"
    );
    for line in crate::ops::report::table(&report).lines() {
        println!("  {line}");
    }
    Ok(())
}
