//! A claimed `grant_updates` row, read as bytes, into a [`GrantUpdate`] or a rejection
//! whose reason names the row id, the update key when it is readable, and the column
//! at fault. Nothing a partner writes fails the batch.

use chrono::{DateTime, Utc};

use crate::domain::UpdateAction;
use crate::pipeline::intake::{time, utf8, Invalid};
use crate::store::updates::{QueuedUpdate, MAX_REASON_LEN, UPDATE_KEY_PREFIX};

/// The longest `update_key` or `code`, in bytes.
const MAX_TEXT_LEN: usize = UPDATE_KEY_PREFIX - 1;

/// Which grant an update names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// By the code the grant carries.
    Code(String),
    /// By its id.
    Grant(i64),
}

/// A valid partner update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUpdate {
    /// Row id.
    pub id: i64,
    /// The partner's idempotency key.
    pub key: String,
    /// The grant it names.
    pub target: Target,
    /// What to do.
    pub action: UpdateAction,
    /// Why, as the partner said.
    pub reason: Option<String>,
    /// When it happened at the partner, when said.
    pub occurred_at: Option<DateTime<Utc>>,
}

impl GrantUpdate {
    /// How a reason or a refusal names this update.
    pub fn label(&self) -> String {
        format!("update {} (update_key {:?})", self.id, self.key)
    }
}

/// An update refused before it reached its grant (or by it), with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Row id.
    pub id: i64,
    /// Why, naming the row, its key and the column.
    pub reason: String,
}

/// Validates one claimed update.
pub fn parse(row: QueuedUpdate) -> Result<GrantUpdate, Rejected> {
    check(&row).map_err(|e| {
        let mut label = format!("update {}", row.id);
        if e.column != "update_key" {
            // The key was read before any other column: it is valid text here.
            let key = String::from_utf8_lossy(row.update_key.as_deref().unwrap_or_default());
            label = format!("{label} (update_key {key:?})");
        }
        Rejected {
            id: row.id,
            reason: format!("{label}: {}: {}", e.column, e.reason),
        }
    })
}

/// Checks one update's columns in order (`update_key`, `action`, `code` or `grant_id`,
/// `reason`, `occurred_at`) and says which is at fault first.
pub fn check(row: &QueuedUpdate) -> Result<GrantUpdate, Invalid> {
    let invalid = |column, reason| Invalid { column, reason };
    let key = text(row.update_key.as_deref()).map_err(|why| invalid("update_key", why))?;
    let action = action(row.action.as_deref()).map_err(|why| invalid("action", why))?;
    let target = target(row).map_err(|(column, why)| invalid(column, why))?;
    let reason = reason(row).map_err(|why| invalid("reason", why))?;
    let occurred_at = match row.occurred_at.as_deref() {
        None => None,
        Some(bytes) => Some(time(bytes).map_err(|why| invalid("occurred_at", why))?),
    };
    Ok(GrantUpdate {
        id: row.id,
        key: key.to_owned(),
        target,
        action,
        reason,
        occurred_at,
    })
}

/// Splits claimed rows into valid updates and rejections, keeping claim order.
pub fn parse_batch(rows: Vec<QueuedUpdate>) -> (Vec<GrantUpdate>, Vec<Rejected>) {
    let mut valid = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for row in rows {
        match parse(row) {
            Ok(update) => valid.push(update),
            Err(r) => rejected.push(r),
        }
    }
    (valid, rejected)
}

/// A key column's bytes as non-empty text of at most [`MAX_TEXT_LEN`] bytes.
fn text(bytes: Option<&[u8]>) -> Result<&str, String> {
    let bytes = bytes.ok_or("is NULL")?;
    if bytes.len() > MAX_TEXT_LEN {
        return Err(format!("is longer than {MAX_TEXT_LEN} bytes, the limit"));
    }
    let text = utf8(bytes)?;
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    Ok(text)
}

fn action(bytes: Option<&[u8]>) -> Result<UpdateAction, String> {
    let word = text(bytes)?;
    UpdateAction::parse(word).ok_or_else(|| {
        let words: Vec<&str> = UpdateAction::ALL.iter().map(|a| a.as_str()).collect();
        format!("{word:?} is not one of {}", words.join(", "))
    })
}

/// The grant named by exactly one of `code` and `grant_id`.
fn target(row: &QueuedUpdate) -> Result<Target, (&'static str, String)> {
    match (row.code.as_deref(), row.grant_id.as_deref()) {
        (Some(_), Some(_)) => Err((
            "code, grant_id",
            "both are set: name the grant by one of them".into(),
        )),
        (None, None) => Err((
            "code, grant_id",
            "neither is set: name the grant by its code or its id".into(),
        )),
        (Some(code), None) => Ok(Target::Code(
            text(Some(code)).map_err(|w| ("code", w))?.to_owned(),
        )),
        (None, Some(id)) => {
            let id = text(Some(id)).map_err(|w| ("grant_id", w))?;
            match id.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Target::Grant(n)),
                _ => Err(("grant_id", format!("{id:?} is not a grant id"))),
            }
        }
    }
}

fn reason(row: &QueuedUpdate) -> Result<Option<String>, String> {
    let len = row.reason_len.unwrap_or(0);
    if len > MAX_REASON_LEN as i64 {
        return Err(format!(
            "is {len} bytes, longer than the limit of {MAX_REASON_LEN}"
        ));
    }
    let Some(bytes) = row.reason.as_deref() else {
        return Ok(None);
    };
    utf8(bytes).map(|r| Some(r.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, code: Option<&str>, grant: Option<&str>, action: &str) -> QueuedUpdate {
        let bytes = |s: &str| Some(s.as_bytes().to_vec());
        QueuedUpdate {
            id: 7,
            update_key: bytes(key),
            code: code.and_then(bytes),
            grant_id: grant.and_then(bytes),
            action: bytes(action),
            reason_len: None,
            reason: None,
            occurred_at: None,
        }
    }

    #[test]
    fn an_update_names_its_grant_by_code_or_id() {
        let by_code = parse(row("k", Some("ABC"), None, "redeem")).unwrap();
        assert_eq!(by_code.target, Target::Code("ABC".into()));
        assert_eq!(by_code.action, UpdateAction::Redeem);
        let by_id = parse(row("k", None, Some("42"), "revoke")).unwrap();
        assert_eq!(by_id.target, Target::Grant(42));
    }

    #[test]
    fn a_bad_row_is_rejected_naming_the_column() {
        let reason = |r: QueuedUpdate| parse(r).unwrap_err().reason;
        assert_eq!(
            reason(row("k", Some("A"), None, "refund")),
            r#"update 7 (update_key "k"): action: "refund" is not one of redeem, unredeem, revoke"#
        );
        assert!(reason(row("k", Some("A"), Some("1"), "redeem")).contains("both are set"));
        assert!(reason(row("k", None, None, "redeem")).contains("neither is set"));
        assert!(reason(row("k", None, Some("x1"), "redeem")).contains(r#"grant_id: "x1" is not"#));
        assert!(reason(row("", None, Some("1"), "redeem")).contains("update_key: is empty"));
        let mut bad_time = row("k", None, Some("1"), "redeem");
        bad_time.occurred_at = Some(b"0000-00-00 00:00:00".to_vec());
        assert!(reason(bad_time).contains("occurred_at:"));
        let mut long = row("k", None, Some("1"), "redeem");
        long.reason_len = Some(5000);
        assert!(reason(long).contains("reason: is 5000 bytes"));
    }
}
