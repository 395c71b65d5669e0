//! The HTTP API's side of `trigger_requests`: requests posted to it are inserted in
//! groups, each key once (a key already there is left out, never an error that fails
//! the group), and read back by key to answer each poster.

use diesel::prelude::*;

use super::super::records::RequestRecord;
use super::super::schema::trigger_requests::dsl as tr;
use super::super::schema::trigger_requests::table;
use super::super::{columns, Conn, QueryResult};
use super::NewRequest;
use crate::store::prepared::in_list;

/// Operations of the HTTP API on `trigger_requests`.
impl Conn {
    /// Those of `keys` that some row already has (as the unique key compares them:
    /// on MariaDB a key with trailing spaces matches, which the caller sorts out by
    /// reading the rows back).
    pub async fn known_request_keys(&mut self, keys: &[&str]) -> QueryResult<Vec<String>> {
        let query = table
            .filter(in_list(tr::request_key, keys.iter().copied()))
            .select(tr::request_key);
        self.load(query).await
    }

    /// Inserts `rows` in one statement per chunk, leaving out each row whose
    /// `request_key` is already taken (by an earlier row, another group or a client's
    /// plain insert), so that no duplicate fails the others. Returns how many were
    /// inserted. The rows' values are checked beforehand (intake's rules), so none is
    /// too long for its column.
    pub async fn enqueue_new(&mut self, rows: &[NewRequest]) -> QueryResult<usize> {
        self.insert_all_ignoring::<_, NewRequest>(table, rows).await
    }

    /// The ids of the requests with these keys, by key.
    pub async fn request_ids_by_keys(&mut self, keys: &[&str]) -> QueryResult<Vec<(String, i64)>> {
        let query = table
            .filter(in_list(tr::request_key, keys.iter().copied()))
            .select((tr::request_key, tr::id));
        self.load(query).await
    }

    /// The requests with these keys, as recorded.
    pub async fn requests_by_keys(&mut self, keys: &[&str]) -> QueryResult<Vec<RequestRecord>> {
        let query = table
            .filter(in_list(tr::request_key, keys.iter().copied()))
            .select(columns::<RequestRecord>());
        self.load(query).await
    }
}
