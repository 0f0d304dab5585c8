//! What the command-line tests share.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs this build's `sandboxctl --url <url> <args>`.
pub fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxctl"))
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .expect("sandboxctl")
}

/// Its standard output as text.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
