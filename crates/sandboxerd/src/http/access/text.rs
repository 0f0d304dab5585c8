//! Output as text, chunk by chunk: a character split across two chunks is
//! held back until it is whole; invalid bytes become U+FFFD.

#[derive(Default)]
pub(super) struct Utf8Chunks {
    pending: Vec<u8>,
}

/// Where an incomplete UTF-8 sequence at the end of `b` starts, if one does.
fn incomplete_tail(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let byte = b[n - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return n, // ASCII or invalid: nothing held back
        };
        return if need > back { n - back } else { n };
    }
    n
}

impl Utf8Chunks {
    /// The text of `data` after what was held back, minus a split character at its end.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let cut = incomplete_tail(&self.pending);
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let s = "añ€😀".as_bytes();
        for split in 0..=s.len() {
            let mut c = Utf8Chunks::default();
            let mut out = c.push(&s[..split]);
            out.push_str(&c.push(&s[split..]));
            assert_eq!(out, "añ€😀", "split at {split}");
        }
        let mut c = Utf8Chunks::default();
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
    }
}
