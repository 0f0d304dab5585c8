//! The Rust client of sand-boxer: a thin, typed wrapper over its HTTP API
//! (`shared/API.md`), used by the `sandboxctl` command line and by the
//! end-to-end tests of the daemon.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandboxctl::ClientError> {
//! use std::time::Duration;
//! use sandboxctl::{api::CreateSandbox, Client};
//!
//! let client = Client::new("http://127.0.0.1:7443", None)?;
//! let req = CreateSandbox { profile: "profile.local-shell".into(), ..Default::default() };
//! let (_status, sandbox) = client.create(&req, Some(Duration::from_secs(60)), None).await?;
//! println!("{} is {}", sandbox.id, sandbox.state);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod hosts;
pub mod token;

pub use client::{Client, ClientError, ListQuery, SnapshotQuery, TemplateSource, UsageQuery};
/// HTTP methods, for [`Client::request_json`].
pub use reqwest::Method;
/// The wire types of the API, re-exported so users need no second dependency.
pub use sandboxer_api as api;
