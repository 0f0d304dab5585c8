//! The one cursor of every list: opaque to clients, versioned, and bound
//! to the list that gave it out, so a cursor of one list (or a made-up
//! one) is 400 `invalid_cursor` in another, never a wrong page.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sandboxer_api::ProblemCode;

use super::error::ApiError;

/// The lists that page with `cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Sandboxes,
    Snapshots,
    SandboxEvents,
    Audit,
    Ledger,
}

impl List {
    fn tag(self) -> &'static str {
        match self {
            List::Sandboxes => "sbx",
            List::Snapshots => "snap",
            List::SandboxEvents => "sevt",
            List::Audit => "aud",
            List::Ledger => "led",
        }
    }
}

/// The format's version, first in every cursor.
const VERSION: &str = "c1";

/// The cursor that continues `list` after the row keyed `key` (what the
/// store pages by: an id or a sequence number).
pub fn encode(list: List, key: &str) -> String {
    format!(
        "{VERSION}.{}",
        URL_SAFE_NO_PAD.encode(format!("{}:{key}", list.tag()))
    )
}

/// The key a cursor of `list` carries; anything else is 400
/// `invalid_cursor` on the field `cursor`.
pub fn decode(list: List, cursor: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            ProblemCode::InvalidCursor,
            "cursor",
            "`cursor` is not a cursor this API gave out",
        )
    };
    let body = cursor
        .strip_prefix(VERSION)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(invalid)?;
    let text = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let key = text
        .strip_prefix(list.tag())
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(invalid)?;
    if key.is_empty() {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

/// The sequence number a cursor of `list` carries (lists keyed by a
/// sequence, at least `min`); anything else is 400 `invalid_cursor`.
pub fn decode_seq(list: List, cursor: &str, min: i64) -> Result<i64, ApiError> {
    decode(list, cursor)?
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| {
            ApiError::bad_request(
                ProblemCode::InvalidCursor,
                "cursor",
                "`cursor` is not a cursor this API gave out",
            )
        })
}

/// A page's `next_cursor` from the store's next key.
pub fn next(list: List, key: Option<String>) -> Option<String> {
    key.map(|k| encode(list, &k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_lists_and_garbage() {
        let c = encode(List::Sandboxes, "sbx_01ABC");
        assert!(c.starts_with("c1."));
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!(decode(List::Sandboxes, &c).expect("decode"), "sbx_01ABC");
        assert!(decode(List::Snapshots, &c).is_err());
        for bad in ["", "abc", "c1.", "c1.!!", "c2.c2J4OjE", "sbx_1"] {
            assert!(decode(List::Sandboxes, bad).is_err(), "{bad}");
        }
    }
}
