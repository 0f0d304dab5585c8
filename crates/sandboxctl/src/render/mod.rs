//! Human output: sandboxes, events and the catalog as aligned text.
//! Everything here treats server data as untrusted text: control
//! characters are escaped and no field is assumed to be present.
//!
//! One file per resource (`sandboxes.rs`, `catalog.rs`, `credits.rs`);
//! here are the text helpers they share.

use chrono::{DateTime, SecondsFormat, Utc};
use sandboxer_api::{Event, Extension, Profile, Sandbox, Snapshot};
use serde_json::Value;

use crate::table::Table;

// Defined with the table, which escapes every cell.
pub use crate::table::clean;

mod catalog;
mod credits;
mod sandboxes;

pub use catalog::*;
pub use credits::*;
pub use sandboxes::*;

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let pad = width - key.chars().count();
        let line = format!("{key}:{} {}", " ".repeat(pad), clean(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One word quoted for a POSIX shell, so a printed command line can be pasted.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_owned();
    }
    if s.chars().any(char::is_control) {
        // ANSI-C quoting keeps the word exact without writing raw control
        // characters to the terminal.
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() && (c as u32) < 0x80 => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Words joined into one shell command line.
pub fn shell_join<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words
        .into_iter()
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A span as at most two units: `45s`, `5m`, `1h55m`, `3d4h`.
pub fn compact_duration(span: chrono::TimeDelta) -> String {
    let secs = span.num_seconds().unsigned_abs();
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let two = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if d > 0 {
        two(d, "d", h, "h")
    } else if h > 0 {
        two(h, "h", m, "m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// `in 1h55m` or `5m ago`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let span = t - now;
    // By the millisecond: a moment ago is `0s ago`, never `in 0s`.
    if span.num_milliseconds() > 0 {
        format!("in {}", compact_duration(span))
    } else {
        format!("{} ago", compact_duration(span))
    }
}

/// A time as RFC 3339 to the second.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time with how far it is from now: `2025-01-01T02:00:00Z (in 1h55m)`.
fn timestamp_rel(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", timestamp(t), relative(t, now))
}

/// The wire name of an enum value (`process`, `self-hosted`, ...).
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// `k=v,k2=v2`, or `-` when there are none.
fn pairs_inline<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let joined: Vec<String> = map.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined.join(",")
    }
}

/// A byte count for people (`512 B`, `1.5 MiB`): powers of 1024, one decimal.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("nsenter"), "nsenter");
        assert_eq!(shell_quote("--wd=/a/b"), "--wd=/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\u{1b}b'"), r"$'a\x1bb\''");
        assert_eq!(
            shell_join(["nsenter", "-t", "123", "--", "x y"]),
            "nsenter -t 123 -- 'x y'"
        );
    }

    #[test]
    fn durations_are_compact() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(compact_duration(d(45)), "45s");
        assert_eq!(compact_duration(d(300)), "5m");
        assert_eq!(compact_duration(d(7200 - 300)), "1h55m");
        assert_eq!(compact_duration(d(7200)), "2h");
        assert_eq!(compact_duration(d(3 * 86_400 + 4 * 3600 + 59)), "3d4h");
        let now = Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("valid time");
        assert_eq!(relative(now + d(90), now), "in 1m");
        assert_eq!(relative(now - d(90), now), "1m ago");
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(relative(now - ms(300), now), "0s ago");
        assert_eq!(relative(now, now), "0s ago");
        assert_eq!(relative(now + ms(300), now), "in 0s");
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 << 20), "100.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(bytes(5 << 40), "5.0 TiB");
        assert_eq!(bytes(1 << 50), "1.0 PiB");
    }

    #[test]
    fn key_values_align_and_escape() {
        let out = key_values(&[
            ("id".into(), "sbx_1".into()),
            ("expires_at".into(), "x\ny".into()),
        ]);
        assert_eq!(out, "id:         sbx_1\nexpires_at: x\\ny\n");
    }
}
