//! Confinement of what runs in an `ext.local` sandbox: the seccomp filter
//! and entering a sandbox with the sandbox's own privileges.
pub mod enter;
pub mod seccomp;
