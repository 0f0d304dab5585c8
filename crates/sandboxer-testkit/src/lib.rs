//! The one copy of what sand-boxer's tests and benchmarks start and share:
//!
//! - [`Daemon`]: the real `sandboxerd` binary on `127.0.0.1:0` with a data
//!   dir of the caller's, and a [`sandboxctl::Client`] of it;
//! - [`TestApp`]: the in-process app on a fresh database, driven with
//!   `Router::oneshot`;
//! - [`TestDir`]: a temporary directory that kills what still runs from it;
//! - fixtures: [`settings`], [`local_shell`], [`sandbox_row`],
//!   [`token_block`], [`repo_file`];
//! - sandboxes: [`run_inside`], [`ready_sandbox`], [`workdir`],
//!   [`sandbox_processes`], [`sandbox_dirs`], [`give_to_sandbox`];
//! - real backends: [`require_bwrap`], [`Sshd`], [`require_docker`];
//! - [`Origin`]: a loopback HTTP server for egress tests.
//!
//! The daemon binary's path is the caller's to give
//! (`env!("CARGO_BIN_EXE_sandboxerd")` exists only in `sandboxerd`'s own
//! tests): [`daemon!`] and [`daemon_bin!`] pass it from there, and
//! [`DaemonBin::beside_current_exe`] finds it for the benchmarks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod backends;
pub mod cgroups;
mod daemon;
mod dir;
mod fixtures;
pub mod origin;
mod sandbox;
mod sshd;

pub use app::{assert_problem, Reply, TestApp};
pub use backends::{have, prepare_docker, require_bwrap, require_docker, sh};
pub use daemon::{Daemon, DaemonBin, DaemonBuilder, DaemonLog};
pub use dir::{alive, kill_leftovers, TestDir};
pub use fixtures::{
    local_shell, repo_file, repo_root, sandbox_row, settings, token_block, LOCAL_SHELL,
};
pub use origin::Origin;
pub use sandbox::{
    give_to_sandbox, ready_sandbox, run_inside, run_inside_as, sandbox_dirs, sandbox_processes,
    workdir,
};
pub use sshd::{free_port, keygen, Sshd};

/// The `sandboxerd` binary cargo built for the calling test crate, as a
/// [`DaemonBin`]; only `sandboxerd`'s own integration tests have it.
#[macro_export]
macro_rules! daemon_bin {
    () => {
        $crate::DaemonBin::new(env!("CARGO_BIN_EXE_sandboxerd"))
    };
}

/// A [`DaemonBuilder`] of the `sandboxerd` binary cargo built for the
/// calling test crate: `daemon!().env("K", "v").start(dir)`.
#[macro_export]
macro_rules! daemon {
    () => {
        $crate::Daemon::builder($crate::daemon_bin!())
    };
}
