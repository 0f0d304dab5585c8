//! Confinement of what runs in an `ext.local` sandbox: its cgroup limits,
//! the seccomp filter and entering a sandbox with the sandbox's own privileges.
pub mod cgroup;
pub mod enter;
pub mod seccomp;
