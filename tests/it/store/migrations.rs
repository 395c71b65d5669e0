//! The migrations themselves: each `down.sql` takes the schema back to what it was
//! before its `up.sql`, on both backends. Nothing else runs a `down.sql`, so a revert
//! that forgets a column would go unseen until an operator needed it.

use std::path::PathBuf;

use couponsd::store::{Backend, Conn, Db};
use diesel::sql_types::Text;

use super::PlainSql;

#[derive(diesel::QueryableByName)]
struct Item {
    #[diesel(sql_type = Text)]
    item: String,
}

/// Every table's columns (type, nullability, default) and every index with its
/// columns, sorted: what a migration changes.
async fn schema(conn: &mut Conn) -> Vec<String> {
    let sql = match conn.backend() {
        Backend::Mysql => concat!(
            "SELECT CONCAT_WS(' ', table_name, column_name, column_type, is_nullable, ",
            "COALESCE(column_default, '-')) AS item FROM information_schema.columns ",
            "WHERE table_schema = DATABASE() UNION ALL ",
            "SELECT CONCAT_WS(' ', table_name, 'index', index_name, non_unique, ",
            "GROUP_CONCAT(column_name ORDER BY seq_in_index)) AS item ",
            "FROM information_schema.statistics WHERE table_schema = DATABASE() ",
            "GROUP BY table_name, index_name, non_unique"
        ),
        Backend::Sqlite => concat!(
            "SELECT m.name || ' ' || p.name || ' ' || p.type || ' ' || p.\"notnull\" || ' ' ",
            "|| COALESCE(p.dflt_value, '-') AS item FROM sqlite_master m ",
            "JOIN pragma_table_info(m.name) p WHERE m.type = 'table' ",
            "AND m.name NOT LIKE 'sqlite_%' UNION ALL ",
            "SELECT tbl_name || ' index ' || name || ' ' || COALESCE(sql, '-') AS item ",
            "FROM sqlite_master WHERE type = 'index'"
        ),
    };
    let rows: Vec<Item> = conn.rows(sql).await;
    let mut items: Vec<String> = rows.into_iter().map(|r| r.item).collect();
    items.sort();
    items
}

/// The migration folders of `conn`'s backend, oldest first.
fn folders(conn: &Conn) -> Vec<PathBuf> {
    let backend = match conn.backend() {
        Backend::Mysql => "mysql",
        Backend::Sqlite => "sqlite",
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    folders.sort();
    folders
}

async fn run(conn: &mut Conn, script: PathBuf) {
    let sql = std::fs::read_to_string(&script).unwrap();
    conn.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
}

async fn every_down_migration_restores_the_schema_before_its_up(url: &str) {
    let db = Db::connect(url, 1).unwrap();
    let mut conn = db.get().await.unwrap();
    let folders = folders(&conn);
    assert!(folders.len() >= 11, "the migrations are found");
    let mut before = Vec::new();
    for folder in &folders {
        before.push(schema(&mut conn).await);
        run(&mut conn, folder.join("up.sql")).await;
    }
    for (folder, before) in folders.iter().zip(before).rev() {
        run(&mut conn, folder.join("down.sql")).await;
        assert_eq!(
            schema(&mut conn).await,
            before,
            "{}: down.sql leaves another schema than up.sql found",
            folder.display()
        );
    }
}
conformance!(url: every_down_migration_restores_the_schema_before_its_up);
