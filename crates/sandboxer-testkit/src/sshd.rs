//! A throwaway OpenSSH server on a loopback port, with keys made for it.
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A new ed25519 key pair at `path` (private) and `path.pub`; answers the
/// public key line.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .context("ssh-keygen (apt-get install -y openssh-client)")?
        .success();
    ensure!(ok, "ssh-keygen failed");
    Ok(std::fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_owned())
}

/// A throwaway `/usr/sbin/sshd` on a loopback port that lets root in with a
/// key made for it; killed on drop.
pub struct Sshd {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its directory: keys, `sshd_config`, `known_hosts`.
    pub dir: PathBuf,
    /// The server's public key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    /// The client's private key.
    pub identity: PathBuf,
}

impl Sshd {
    /// Start it with its files in `<dir>/sshd` and wait until it listens.
    /// `<dir>/sshd/known_hosts` holds its host key for OpenSSH's `ssh`.
    pub fn start(dir: &Path) -> anyhow::Result<Sshd> {
        let dir = dir.join("sshd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let host_key = keygen(&dir.join("host_key"))?;
        let client_pub = keygen(&dir.join("client_key"))?;
        std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n"))?;
        let port = free_port();
        std::fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_key}\n"),
        )?;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\nLogLevel ERROR\nMaxSessions 20\n",
                d = dir.display()
            ),
        )?;
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting /usr/sbin/sshd (apt-get install -y openssh-server)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("sshd did not listen within 20s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Sshd {
            child,
            port,
            identity: dir.join("client_key"),
            dir,
            host_key,
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
