//! Relaying between two sockets without copying through user space:
//! `splice(2)` moves the bytes from one socket into a pipe and from the
//! pipe into the other, inside the kernel. The egress relay (agent) and
//! the egress proxy (daemon) both relay this way; it halves their CPU time
//! per byte against a read/write loop.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;

use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// The pipe's size asked for, and the most bytes moved per `splice` call
/// (best effort: the kernel may keep the default 64 KiB). Every byte a
/// stalled reader leaves in it is the kernel's memory, charged to no
/// sandbox: kept small.
const PIPE_SIZE: usize = 256 << 10;

/// A tokio socket, used through shared references so both directions run
/// at once.
pub trait Stream: AsFd + Sync {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send;
    fn try_io_with<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R>;
}

macro_rules! stream {
    ($t:ty) => {
        impl Stream for $t {
            async fn ready(&self, interest: Interest) -> io::Result<()> {
                <$t>::ready(self, interest).await.map(|_| ())
            }
            fn try_io_with<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                self.try_io(interest, f)
            }
        }
    };
}
stream!(TcpStream);
stream!(UnixStream);

/// Runs `op` when `s` is ready for `interest`, again until it does not
/// answer `WouldBlock`.
async fn when_ready<S: Stream, R>(
    s: &S,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        s.ready(interest).await?;
        match s.try_io_with(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Writes all of `buf` to `w`.
pub async fn write_all<W: Stream>(w: &W, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = when_ready(w, Interest::WRITABLE, || {
            rustix::io::write(w.as_fd(), buf).map_err(io::Error::from)
        })
        .await?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Reads what `r` has (at most `buf.len()` bytes); 0 at its end.
pub async fn read<R: Stream>(r: &R, buf: &mut [u8]) -> io::Result<usize> {
    when_ready(r, Interest::READABLE, || {
        rustix::io::read(r.as_fd(), &mut *buf).map_err(io::Error::from)
    })
    .await
}

/// Moves bytes from `r` to `w` until `r` ends, then shuts `w` down for
/// writing (the end passed on); answers the bytes moved. When either side
/// fails instead (a reset), `w` is reset too once it is closed, never
/// ended as if the stream were whole, and the other direction is woken to
/// end as well.
pub async fn copy<R: Stream, W: Stream>(r: &R, w: &W) -> u64 {
    let (moved, ended) = splice_until_end(r, w).await;
    if ended {
        let _ = rustix::net::shutdown(w.as_fd(), Shutdown::Write);
    } else {
        let _ = rustix::net::sockopt::set_socket_linger(w.as_fd(), Some(std::time::Duration::ZERO));
        let _ = rustix::net::shutdown(w.as_fd(), Shutdown::Read);
        let _ = rustix::net::shutdown(r.as_fd(), Shutdown::Read);
    }
    moved
}

/// `(bytes moved, whether r ended cleanly)`.
async fn splice_until_end<R: Stream, W: Stream>(r: &R, w: &W) -> (u64, bool) {
    let Ok((out, into)) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) else {
        return (0, false);
    };
    let _ = rustix::pipe::fcntl_setpipe_size(&into, PIPE_SIZE);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = match when_ready(r, Interest::READABLE, || {
            splice(r.as_fd(), None, &into, None, PIPE_SIZE, flags).map_err(io::Error::from)
        })
        .await
        {
            Ok(0) => return (total, true),
            Err(_) => return (total, false),
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match when_ready(w, Interest::WRITABLE, || {
                splice(&out, None, w.as_fd(), None, left, flags).map_err(io::Error::from)
            })
            .await
            {
                Ok(0) | Err(_) => return (total, false),
                Ok(m) => left -= m,
            }
        }
        total += n as u64;
    }
}

/// Both ways at once until both ends finish: `(a → b, b → a)` bytes.
pub async fn both<A: Stream, B: Stream>(a: &A, b: &B) -> (u64, u64) {
    tokio::join!(copy(a, b), copy(b, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The far end: echo everything back, uppercased, until EOF.
        let far = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got.to_ascii_uppercase()).await.unwrap();
            got.len()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (near, mut client) = UnixStream::pair().unwrap();
        let relay = tokio::spawn(async move { both(&near, &tcp).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(far.await.unwrap(), data.len());
        assert_eq!(back, data.to_ascii_uppercase());
        assert_eq!(relay.await.unwrap(), (data.len() as u64, data.len() as u64));
    }
}
