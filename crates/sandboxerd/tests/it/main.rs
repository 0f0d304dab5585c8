//! The daemon's integration tests, one binary: each module was once its own
//! test binary, and every binary linked the whole daemon again (about 12
//! copies of it on disk, which a CI machine with little free space could not
//! hold). Run one group with `cargo nextest run -E 'test(/^escapes::/)'`.

mod access;
mod budget;
mod compose;
mod credits;
mod docker;
mod e2e;
mod egress;
mod escapes;
mod escapes_snapshots;
mod exit_snapshots;
mod handlers;
mod hardening;
mod lifecycle;
mod limits;
mod names;
mod pause;
mod pools;
mod routing;
mod security;
mod snapshots;
mod ssh_gateway;
mod ui;
