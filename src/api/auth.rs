//! Bearer tokens: a client presents its token (`Authorization: Bearer <token>`); the
//! SHA-256 of what it presents is compared, in constant time, with every client's
//! `api.clients.<name>.token_sha256`. A missing or unknown token is 401, a known client
//! without the route's scope 403. The token is hashed and dropped: it is never logged
//! nor kept.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::debug;

use super::Problem;
use crate::config::{ApiClient, Scope};

/// The clients of `api.clients`.
#[derive(Debug)]
pub struct Clients(Vec<ApiClient>);

impl Clients {
    /// The configured clients.
    pub fn new(clients: Vec<ApiClient>) -> Clients {
        Clients(clients)
    }

    /// The client whose token `headers` carry, when it may act in `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<&ApiClient, Problem> {
        let unknown = || {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token of one of api.clients is needed (Authorization: Bearer <token>)",
            )
        };
        let token = bearer(headers).ok_or_else(unknown)?;
        let client = self.by_token(token).ok_or_else(unknown)?;
        if !client.scopes.contains(&scope) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "client {} does not have the scope {} (api.clients.{}.scopes)",
                    client.name,
                    scope.as_str(),
                    client.name
                ),
            ));
        }
        Ok(client)
    }

    /// The client whose `token_sha256` is the SHA-256 of `token`. Every client is
    /// compared, each in constant time, so the time taken says nothing of how close a
    /// guess came.
    fn by_token(&self, token: &[u8]) -> Option<&ApiClient> {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for client in &self.0 {
            if bool::from(client.token_sha256.ct_eq(&presented)) {
                found = Some(client);
            }
        }
        found
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), when there
/// is one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// What a group of routes needs: the clients and the scope.
#[derive(Debug, Clone)]
pub struct Needs {
    /// `api.clients`.
    pub clients: Arc<Clients>,
    /// The routes' scope.
    pub scope: Scope,
}

/// The middleware in front of a group of routes: refuses before the body is read.
pub async fn require(State(needs): State<Needs>, request: Request, next: Next) -> Response {
    match needs.clients.authorize(request.headers(), needs.scope) {
        Ok(client) => {
            debug!(client = %client.name, method = %request.method(), path = request.uri().path(), "api request");
            next.run(request).await
        }
        Err(problem) => problem.into_response(),
    }
}
