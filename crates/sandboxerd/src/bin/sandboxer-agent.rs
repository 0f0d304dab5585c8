//! `sandboxer-agent`: the in-sandbox agent (see the `sandboxer-agent` crate).
//! A binary of this package so the daemon's tests build it and find it next
//! to `sandboxerd`, where the daemon looks for it.

fn main() {
    match sandboxer_agent::Options::parse(std::env::args().skip(1)) {
        Ok(opts) => std::process::exit(sandboxer_agent::run(opts)),
        Err(e) => {
            eprintln!("sandboxer-agent: {e}");
            std::process::exit(2);
        }
    }
}
