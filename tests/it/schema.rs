//! `src/store/schema.rs` is written by hand for two backends: every column it declares
//! must exist in the migrated database of each backend.

use couponsd::store::schema::*;
use diesel::query_builder::QueryFragment;
use diesel::QueryDsl;
use diesel_async::SimpleAsyncConnection;

use crate::on_both_backends;
use crate::support::*;

/// The `SELECT <every declared column> FROM <table> LIMIT 1` of every table, as `$db`
/// renders it.
macro_rules! selects {
    ($db:ty; $($t:ident),*) => {
        vec![$(render::<$db, _>(&$t::table.select($t::all_columns).limit(1))),*]
    };
}

macro_rules! every_table {
    ($db:ty) => {
        selects!($db; trigger_requests, campaigns, coupons, participations, grants, deliveries,
            delivery_attempts, channel_states, coupon_rotations, job_leases, coupon_codes,
            grant_updates, grant_transitions, campaign_days, stock_samples)
    };
}

fn render<DB, Q>(query: &Q) -> String
where
    DB: diesel::backend::Backend + Default,
    DB::QueryBuilder: Default,
    Q: QueryFragment<DB>,
{
    diesel::debug_query::<DB, _>(query)
        .to_string()
        .split(" -- binds")
        .next()
        .unwrap()
        .replace('?', "1")
}

async fn every_declared_column_exists_after_migration(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = context(config(
        &db,
        &receiver,
        &shipped_rules(),
        &standard_campaigns(1),
        "",
    ))
    .await;
    match ctx.db.get().await.unwrap() {
        couponsd::store::Conn::Mysql(mut c) => {
            for sql in every_table!(diesel::mysql::Mysql) {
                c.batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
        couponsd::store::Conn::Sqlite(mut c) => {
            for sql in every_table!(diesel::sqlite::Sqlite) {
                c.batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }
}
on_both_backends!(
    every_declared_column_exists_after_migration,
    every_declared_column_exists_after_migration
);
