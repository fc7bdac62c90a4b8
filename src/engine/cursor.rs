//! Opaque page cursors: the sort key of the last item shown plus a hash of the query, so a cursor
//! cannot be replayed against another query. Keyset paging keeps pages stable while data changes.

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EngineError, Result};
use crate::model::canonical;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Raw {
    v: u8,
    q: String,
    after: String,
}

/// The query hash a cursor is bound to.
pub fn query_hash<Q: Serialize>(query: &Q) -> String {
    canonical::digest(query).unwrap_or_default()[..16].to_owned()
}

pub fn check_limit(limit: Option<u32>) -> Result<usize> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        n => Err(EngineError::InvalidArgument(format!(
            "`limit` = {n} is out of range: use 1 to {MAX_LIMIT}"
        ))),
    }
}

/// The sort key after which the page starts.
pub fn decode(cursor: Option<&str>, query: &str) -> Result<Option<String>> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let bad = || {
        EngineError::InvalidArgument(
            "`cursor` is not valid: pass back a `next_cursor` exactly as it was returned"
                .to_owned(),
        )
    };
    if cursor.len() > 2048 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let raw: Raw = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if raw.v != 1 {
        return Err(bad());
    }
    if raw.q != query {
        return Err(EngineError::InvalidArgument(
            "`cursor` belongs to a different query: repeat the same filters, or drop the cursor"
                .to_owned(),
        ));
    }
    Ok(Some(raw.after))
}

pub fn encode(after: &str, query: &str) -> String {
    let raw = Raw {
        v: 1,
        q: query.to_owned(),
        after: after.to_owned(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&raw).unwrap_or_default())
}

/// Pages `items` (already sorted by `key`) after `after`, `limit` at a time: the reference the
/// index's pages are checked against (`index_guard`).
#[cfg(test)]
pub fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    after: Option<&str>,
    limit: usize,
    query: &str,
) -> Page<T> {
    let mut rest: Vec<T> = match after {
        Some(after) => items
            .into_iter()
            .filter(|i| key(i).as_str() > after)
            .collect(),
        None => items,
    };
    let next_cursor = (rest.len() > limit).then(|| encode(&key(&rest[limit - 1]), query));
    rest.truncate(limit);
    Page {
        items: rest,
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once_in_order() {
        let items: Vec<String> = (0..7).map(|i| format!("id{i}")).collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = paginate(items.clone(), |s| s.clone(), after.as_deref(), 3, "q");
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => after = decode(Some(&c), "q").unwrap(),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn bad_cursors_and_limits_are_refused() {
        assert!(decode(Some("!!"), "q").is_err());
        assert!(decode(Some(&encode("x", "q")), "other").is_err());
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(501)).is_err());
        assert_eq!(check_limit(None).unwrap(), 50);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Issue 8: a hostile cursor (or a well-encoded one with hostile content) is refused.
        #[test]
        fn hostile_cursors_are_refused_not_panics(raw in crate::model::hostile::text()) {
            let _ = decode(Some(&raw), "q");
            let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_bytes());
            proptest::prop_assert!(decode(Some(&wrapped), "q").is_err());
            let _ = decode(Some(&encode(&raw, &raw)), "q");
        }
    }
}
