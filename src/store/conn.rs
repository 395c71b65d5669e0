//! [`Conn`]: one connection of either backend, and the one place that picks between
//! them. Every table's operations are written once, as methods of `Conn` in the
//! table's file, with diesel's query builder; a query is handed to [`Conn::load`],
//! [`Conn::execute`] and their kin, which run it on the backend at hand. Where the SQL
//! itself differs (row locks, multi-row inserts, a transaction that writes, a
//! function's name), the table's file asks [`Conn::backend`] or uses the method here
//! that says what differs.

use std::future::Future;

use futures_util::future::Either;

use diesel::connection::AnsiTransactionManager;
use diesel::query_builder::{IncompleteInsertStatement, InsertOrIgnoreStatement, InsertStatement};
use diesel::query_dsl::methods::LimitDsl;
use diesel::result::Error as DieselError;
use diesel::{Insertable, Selectable, Table};
use diesel_async::methods::{ExecuteDsl, LoadQuery};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager};

use super::prepared::{pow2_chunks, Cached};
use super::{MysqlConn, QueryResult, SqliteConn};

/// A transaction's body: an async closure over the connection, whose future is named
/// (`Fut`) so that a bound can ask it to be `Send` for every lifetime of the
/// connection it borrows (diesel-async's own `AsyncFunc`, which it does not export).
pub trait TxBody<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TxBody<T, R>>::Fut {
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TxBody<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Which backend a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MySQL or MariaDB.
    Mysql,
    /// SQLite.
    Sqlite,
}

/// A connection of either backend, taken from the pool ([`super::Db::get`]); dropping
/// it gives it back.
pub enum Conn {
    /// MySQL or MariaDB.
    Mysql(Object<MysqlConn>),
    /// SQLite.
    Sqlite(Object<SqliteConn>),
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// `BEGIN`: locks are taken as statements need them.
    Deferred,
    /// On SQLite `BEGIN IMMEDIATE`, the one writer taken first; `BEGIN` on MySQL.
    Writing,
}

/// The columns of the row type `R`, in its fields' order, for `.select(...)` in a query
/// either backend runs (diesel's `R::as_select()` is tied to one backend).
pub fn columns<R: Selectable<diesel::mysql::Mysql>>() -> R::SelectExpression {
    R::construct_selection()
}

impl Conn {
    /// The backend this connection talks to.
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Mysql(_) => Backend::Mysql,
            Conn::Sqlite(_) => Backend::Sqlite,
        }
    }

    // The methods that run a query are not `async fn`: an async fn's future leaks its
    // auto traits, and `Send` is then proved again with every lifetime erased, where
    // `Q: LoadQuery<'q, ..>` no longer holds for a query that binds a `&str` ("not
    // general enough" in a transaction's body or a spawned task). A declared `Send`
    // future is proved once, here.

    /// Runs `query` and returns its rows.
    pub fn load<'a, 'q, Q, T>(
        &'a mut self,
        query: Q,
    ) -> impl Future<Output = QueryResult<Vec<T>>> + Send + use<'a, 'q, Q, T>
    where
        Q: LoadQuery<'q, MysqlConn, T> + LoadQuery<'q, SqliteConn, T> + Send + 'q,
        T: Send,
    {
        match self {
            Conn::Mysql(c) => Either::Left(query.load(&mut **c)),
            Conn::Sqlite(c) => Either::Right(query.load(&mut **c)),
        }
    }

    /// Runs `query` and returns its one row, or `NotFound`.
    pub fn get_result<'a, 'q, Q, T>(
        &'a mut self,
        query: Q,
    ) -> impl Future<Output = QueryResult<T>> + Send + use<'a, 'q, Q, T>
    where
        Q: LoadQuery<'q, MysqlConn, T> + LoadQuery<'q, SqliteConn, T> + Send + 'q,
        T: Send + 'a,
    {
        match self {
            Conn::Mysql(c) => Either::Left(query.get_result(&mut **c)),
            Conn::Sqlite(c) => Either::Right(query.get_result(&mut **c)),
        }
    }

    /// Runs `query` with `LIMIT 1` and returns the row, or `NotFound`.
    pub fn first<'a, 'q, Q, T>(
        &'a mut self,
        query: Q,
    ) -> impl Future<Output = QueryResult<T>> + Send + use<'a, 'q, Q, T>
    where
        Q: LimitDsl,
        Q::Output: LoadQuery<'q, MysqlConn, T> + LoadQuery<'q, SqliteConn, T> + Send + 'q,
        T: Send + 'a,
    {
        self.get_result(query.limit(1))
    }

    /// Runs `on_mysql` on MySQL and `on_sqlite` on SQLite, and returns the rows: for
    /// a read that differs between the backends, most often one that locks its rows on
    /// MySQL (`query.clone().for_update()`, inside the caller's transaction) where
    /// SQLite, with its one writer, has no row locks.
    pub fn load_either<'a, 'q, M, S, T>(
        &'a mut self,
        on_mysql: M,
        on_sqlite: S,
    ) -> impl Future<Output = QueryResult<Vec<T>>> + Send + use<'a, 'q, M, S, T>
    where
        M: LoadQuery<'q, MysqlConn, T> + Send + 'q,
        S: LoadQuery<'q, SqliteConn, T> + Send + 'q,
        T: Send,
    {
        match self {
            Conn::Mysql(c) => Either::Left(on_mysql.load(&mut **c)),
            Conn::Sqlite(c) => Either::Right(on_sqlite.load(&mut **c)),
        }
    }

    /// Runs `statement` and returns the number of rows it changed (matched, for an
    /// `UPDATE` on MySQL: the connection counts found rows, as SQLite does).
    pub fn execute<'a, Q>(
        &'a mut self,
        statement: Q,
    ) -> impl Future<Output = QueryResult<usize>> + Send + use<'a, Q>
    where
        Q: ExecuteDsl<MysqlConn> + ExecuteDsl<SqliteConn> + Send + 'a,
    {
        match self {
            Conn::Mysql(c) => Either::Left(statement.execute(&mut **c)),
            Conn::Sqlite(c) => Either::Right(statement.execute(&mut **c)),
        }
    }

    /// Runs `statement` on MySQL and returns the rows it changed; on SQLite does
    /// nothing and returns 0: for the lock rows MySQL takes (an upsert, MySQL's own
    /// syntax) where SQLite, with its one writer, needs none.
    pub fn execute_on_mysql<'a, Q>(
        &'a mut self,
        statement: Q,
    ) -> impl Future<Output = QueryResult<usize>> + Send + use<'a, Q>
    where
        Q: ExecuteDsl<MysqlConn> + Send + 'a,
    {
        match self {
            Conn::Mysql(c) => Either::Left(statement.execute(&mut **c)),
            Conn::Sqlite(_) => Either::Right(std::future::ready(Ok(0))),
        }
    }

    /// Runs SQL text with no parameters and no result (one or more statements).
    pub async fn batch_execute(&mut self, sql: &str) -> QueryResult<()> {
        match self {
            Conn::Mysql(c) => c.batch_execute(sql).await,
            Conn::Sqlite(c) => c.batch_execute(sql).await,
        }
    }

    /// Inserts `rows` into `table`. On MySQL in one statement per power-of-two chunk
    /// (200 rows are 128 + 64 + 8), each kept prepared by the connection: a multi-row
    /// insert prepared afresh costs a column definition per value (see `prepared`).
    /// diesel-async cannot send SQLite's multi-row insert, so on SQLite one statement
    /// runs on the wrapped sync connection (inside the same transaction), where a
    /// prepare is cheap. Name the row type at the call (`insert_all::<_, Row>`): the
    /// compiler does not infer it through the insert's bounds.
    pub async fn insert_all<T, R>(&mut self, table: T, rows: &[R]) -> QueryResult<usize>
    where
        T: Table + Copy + Send + 'static,
        R: Clone + Send + Sync + 'static,
        for<'r> &'r [R]: Insertable<T>,
        for<'r> Cached<InsertStatement<T, <&'r [R] as Insertable<T>>::Values>>:
            ExecuteDsl<MysqlConn> + Send,
        Vec<R>: Insertable<T>,
        InsertStatement<T, <Vec<R> as Insertable<T>>::Values>:
            diesel::query_dsl::methods::ExecuteDsl<diesel::SqliteConnection>,
    {
        self.insert_rows::<T, R, _>(diesel::insert_into(table), rows)
            .await
    }

    /// Inserts those of `rows` whose unique keys are new, as [`Conn::insert_all`] does,
    /// and leaves out the rest: `INSERT IGNORE` on MySQL, `INSERT OR IGNORE` on SQLite.
    /// Returns the number of rows inserted. Only for rows whose values the column types
    /// hold (MySQL's `IGNORE` also turns a value that does not fit into a warning).
    pub async fn insert_all_ignoring<T, R>(&mut self, table: T, rows: &[R]) -> QueryResult<usize>
    where
        T: Table + Copy + Send + 'static,
        R: Clone + Send + Sync + 'static,
        for<'r> &'r [R]: Insertable<T>,
        for<'r> Cached<InsertOrIgnoreStatement<T, <&'r [R] as Insertable<T>>::Values>>:
            ExecuteDsl<MysqlConn> + Send,
        Vec<R>: Insertable<T>,
        InsertOrIgnoreStatement<T, <Vec<R> as Insertable<T>>::Values>:
            diesel::query_dsl::methods::ExecuteDsl<diesel::SqliteConnection>,
    {
        self.insert_rows::<T, R, _>(diesel::insert_or_ignore_into(table), rows)
            .await
    }

    async fn insert_rows<T, R, Op>(
        &mut self,
        insert: IncompleteInsertStatement<T, Op>,
        rows: &[R],
    ) -> QueryResult<usize>
    where
        T: Table + Copy + Send + 'static,
        Op: Copy + Send + 'static,
        R: Clone + Send + Sync + 'static,
        for<'r> &'r [R]: Insertable<T>,
        for<'r> Cached<InsertStatement<T, <&'r [R] as Insertable<T>>::Values, Op>>:
            ExecuteDsl<MysqlConn> + Send,
        Vec<R>: Insertable<T>,
        InsertStatement<T, <Vec<R> as Insertable<T>>::Values, Op>:
            diesel::query_dsl::methods::ExecuteDsl<diesel::SqliteConnection>,
    {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            Conn::Mysql(c) => {
                let mut inserted = 0;
                for chunk in pow2_chunks(rows) {
                    inserted += Cached(insert.values(chunk)).execute(&mut **c).await?;
                }
                Ok(inserted)
            }
            Conn::Sqlite(c) => {
                let rows = rows.to_vec();
                c.spawn_blocking(move |sync| {
                    diesel::RunQueryDsl::execute(insert.values(rows), sync)
                })
                .await
            }
        }
    }

    /// Runs `body` in a transaction: committed when it returns `Ok`, rolled back when
    /// it returns `Err`. Not cancel-safe, like every diesel-async transaction: never
    /// race it against a timeout.
    pub async fn transaction<R, E, F>(&mut self, body: F) -> Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R, E>
            + TxBody<&'r mut Self, Result<R, E>, Fut: Send>
            + Send,
        E: From<DieselError> + Send,
        R: Send,
    {
        self.within(Begin::Deferred, body).await
    }

    /// Runs `body` in a transaction that reads and then writes. On SQLite it begins
    /// `IMMEDIATE`, taking the write lock first (waiting up to `busy_timeout` for it): a
    /// deferred transaction that read first fails at once with "database is locked"
    /// when another connection wrote meanwhile, which no busy timeout waits out.
    pub async fn write_transaction<R, E, F>(&mut self, body: F) -> Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R, E>
            + TxBody<&'r mut Self, Result<R, E>, Fut: Send>
            + Send,
        E: From<DieselError> + Send,
        R: Send,
    {
        self.within(Begin::Writing, body).await
    }

    async fn within<R, E, F>(&mut self, begin: Begin, body: F) -> Result<R, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R, E>
            + TxBody<&'r mut Self, Result<R, E>, Fut: Send>
            + Send,
        E: From<DieselError> + Send,
        R: Send,
    {
        self.begin(begin).await?;
        match body(self).await {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(error) => match self.rollback().await {
                // A broken transaction manager is the likely effect of `error`, which
                // says more.
                Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
                Err(rollback) => Err(rollback.into()),
            },
        }
    }

    async fn begin(&mut self, begin: Begin) -> QueryResult<()> {
        match (self, begin) {
            (Conn::Mysql(c), _) => {
                <MysqlConn as AsyncConnection>::TransactionManager::begin_transaction(&mut **c)
                    .await
            }
            (Conn::Sqlite(c), Begin::Deferred) => {
                <SqliteConn as AsyncConnection>::TransactionManager::begin_transaction(&mut **c)
                    .await
            }
            (Conn::Sqlite(c), Begin::Writing) => {
                c.spawn_blocking(|sync| {
                    AnsiTransactionManager::begin_transaction_sql(sync, "BEGIN IMMEDIATE")
                })
                .await
            }
        }
    }

    async fn commit(&mut self) -> QueryResult<()> {
        match self {
            Conn::Mysql(c) => {
                <MysqlConn as AsyncConnection>::TransactionManager::commit_transaction(&mut **c)
                    .await
            }
            Conn::Sqlite(c) => {
                <SqliteConn as AsyncConnection>::TransactionManager::commit_transaction(&mut **c)
                    .await
            }
        }
    }

    async fn rollback(&mut self) -> QueryResult<()> {
        match self {
            Conn::Mysql(c) => {
                <MysqlConn as AsyncConnection>::TransactionManager::rollback_transaction(&mut **c)
                    .await
            }
            Conn::Sqlite(c) => {
                <SqliteConn as AsyncConnection>::TransactionManager::rollback_transaction(&mut **c)
                    .await
            }
        }
    }
}
