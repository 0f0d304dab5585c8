//! Browser sessions of the status page: an opaque random id in the cookie,
//! mapped here to the configured token it was opened with. The token itself
//! never goes into a cookie; a session ends at logout, after 12 hours, and
//! when the daemon restarts (sessions live in memory only).
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

/// The cookie that carries a browser's session.
pub const COOKIE: &str = "sandboxer_ui";

/// Paths under `/ui` anyone may load (the login form and the assets).
pub fn is_public(path: &str) -> bool {
    path == "/ui/login" || path.starts_with("/ui/assets/")
}

/// Whether `path` is the status page's.
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The session id in the request's `sandboxer_ui` cookie.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// How long a session lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept; the oldest go first.
const MAX: usize = 10_000;

#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (usize, Instant)>>);

impl Sessions {
    /// A new session of configured token `token` (its index); its id.
    pub fn open(&self, token: usize) -> std::io::Result<String> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id = hex::encode(bytes);
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), (token, now + TTL));
        Ok(id)
    }

    /// The token index of a live session.
    pub fn token(&self, id: &str) -> Option<usize> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(token, _)| *token)
    }

    /// Ends a session (logout).
    pub fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_only_by_its_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; sandboxer_ui=tok-en_1; sandboxer_uix=no"),
        );
        assert_eq!(cookie_token(&h), Some("tok-en_1"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("sandboxer_uix=no"),
        );
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn a_session_maps_to_its_token_until_closed() {
        let s = Sessions::default();
        let a = s.open(3).expect("open");
        let b = s.open(1).expect("open");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!((s.token(&a), s.token(&b)), (Some(3), Some(1)));
        s.close(&a);
        assert_eq!(s.token(&a), None);
        assert_eq!(s.token("forged"), None);
    }
}
