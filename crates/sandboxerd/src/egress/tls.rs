//! The server name (SNI) of a TLS ClientHello, read from the first bytes a
//! client sends through a CONNECT tunnel (RFC 8446 §4.1.2, RFC 6066 §3).
//! Nothing is decrypted: the ClientHello is sent in the clear.

/// The largest first record read before deciding (a TLS record is at most
/// 2^14 bytes of payload plus its 5-byte header).
pub const MAX_RECORD: usize = 5 + (1 << 14);

/// What the first bytes of a tunnel are.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS (or not a handshake): nothing to check.
    NotTls,
    /// A TLS handshake record not complete yet: at least this many more bytes are needed.
    Incomplete(usize),
    /// A ClientHello with this server name (lower case, no trailing dot).
    Sni(String),
    /// A ClientHello naming no server.
    NoSni,
    /// A TLS handshake record that is not a well-formed ClientHello.
    Malformed,
}

/// Reads `buf`, the first bytes the client sent.
pub fn client_hello(buf: &[u8]) -> Hello {
    // Record header: type 22 (handshake), version 3.x, length.
    if buf.is_empty() || buf[0] != 22 {
        return Hello::NotTls;
    }
    if buf.len() < 5 {
        return Hello::Incomplete(5 - buf.len());
    }
    if buf[1] != 3 {
        return Hello::NotTls;
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len == 0 || len > (1 << 14) {
        return Hello::Malformed;
    }
    if buf.len() < 5 + len {
        return Hello::Incomplete(5 + len - buf.len());
    }
    parse_handshake(&buf[5..5 + len]).unwrap_or(Hello::Malformed)
}

/// A cursor that fails instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
}

fn parse_handshake(record: &[u8]) -> Option<Hello> {
    let mut r = Reader(record);
    // Handshake type 1 = ClientHello.
    if r.u8()? != 1 {
        return Some(Hello::Malformed);
    }
    let body_len = r.u24()?;
    // A ClientHello split over several records is legal but rare (huge
    // post-quantum key shares still fit one): only the first record is
    // read. A server name found there counts; one that would come later
    // cannot be checked, so a cut hello without one is malformed here.
    let whole = body_len <= r.0.len();
    let body = r.take(body_len.min(r.0.len()))?;
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    let cut = if whole {
        Hello::NoSni
    } else {
        Hello::Malformed
    };
    if r.0.is_empty() {
        return Some(cut);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len.min(r.0.len()))?);
    while exts.0.len() >= 4 {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let Some(data) = exts.take(len) else {
            return Some(Hello::Malformed);
        };
        if kind == 0 {
            return Some(server_name(data).unwrap_or(Hello::Malformed));
        }
    }
    Some(cut)
}

/// The `server_name` extension: a list of (type, name); type 0 is a host name.
fn server_name(data: &[u8]) -> Option<Hello> {
    let mut r = Reader(data);
    let list = r.u16()?;
    let mut r = Reader(r.take(list)?);
    while !r.0.is_empty() {
        let kind = r.u8()?;
        let len = r.u16()?;
        let name = r.take(len)?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok()?;
            return Some(match sandboxer_api::normalize_name(name) {
                Some(n) => Hello::Sni(n),
                None => Hello::Malformed,
            });
        }
    }
    Some(Hello::NoSni)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The ClientHello rustls sends for `name` (a real one, as clients make).
    fn hello_for(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello() {
        let hello = hello_for("Files.PythonHosted.org");
        assert_eq!(
            client_hello(&hello),
            Hello::Sni("files.pythonhosted.org".into())
        );
        // Byte by byte: incomplete until the whole record is there.
        for cut in 1..hello.len() {
            match client_hello(&hello[..cut]) {
                Hello::Incomplete(n) => assert!(n >= 1, "{cut}"),
                other => panic!("{cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_address_has_no_name() {
        // rustls sends no SNI for an IP address.
        let hello = hello_for("192.0.2.1");
        assert_eq!(client_hello(&hello), Hello::NoSni);
    }

    #[test]
    fn other_bytes_are_not_tls() {
        assert_eq!(client_hello(b"SSH-2.0-OpenSSH_9.2\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(&[22, 9, 1, 0, 4]), Hello::NotTls);
    }

    #[test]
    fn garbage_never_panics() {
        let real = hello_for("a.test");
        // Every truncation of the body under an intact header, and
        // corrupted lengths, end in an answer, never a panic.
        for i in 5..real.len() {
            let mut bad = real.clone();
            bad[i] = 0xff;
            let _ = client_hello(&bad);
            let mut short = real[..i].to_vec();
            let len = (i - 5) as u16;
            short[3..5].copy_from_slice(&len.to_be_bytes());
            let _ = client_hello(&short);
        }
        assert_eq!(client_hello(&[22, 3, 1, 0, 0]), Hello::Malformed);
        assert_eq!(client_hello(&[22, 3, 1, 0x7f, 0xff]), Hello::Malformed);
        assert_eq!(client_hello(&[22, 3, 1, 0, 1, 2]), Hello::Malformed);
        // A handshake that announces more than its record holds, with no
        // name in what is there, cannot be checked.
        assert_eq!(client_hello(&[22, 3, 1, 0, 1, 1]), Hello::Malformed);
        let mut split = real.clone();
        let cut = 5 + 4 + 34; // header, handshake header, version + random
        split.truncate(cut);
        let len = (cut - 5) as u16;
        split[3..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(client_hello(&split), Hello::Malformed);
    }
}
