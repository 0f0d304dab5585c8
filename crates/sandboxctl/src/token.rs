//! `sandboxctl token new`: a fresh random API token and the configuration
//! block for it. The daemon stores only the SHA-256 of a token.
use std::io::Read;

use sha2::{Digest, Sha256};

/// A new random token: `sbt_` and 64 hex digits (32 bytes from the kernel).
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("sbt_{}", hex::encode(bytes)))
}

/// Lower-case hex SHA-256 of a token, as `token_sha256` in the configuration.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The text printed by `token new`: the token once, and the block to paste.
pub fn config_block(
    token: &str,
    actor_type: &str,
    actor: &str,
    project: &str,
    role: &str,
) -> String {
    format!(
        "# Give this token to {actor}; it is shown only now and is not stored anywhere:\n\
         #   SANDBOXER_TOKEN={token}\n\
         # Add this block to sandboxerd's configuration (it holds only the hash):\n\
         [[tokens]]\n\
         token_sha256 = \"{}\"\n\
         actor_type = \"{actor_type}\"\n\
         actor = \"{}\"\n\
         project = \"{}\"\n\
         role = \"{role}\"\n",
        token_sha256(token),
        actor.replace('\\', "\\\\").replace('"', "\\\""),
        project.replace('\\', "\\\\").replace('"', "\\\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hash_as_sha256() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert!(a.starts_with("sbt_") && a.len() == 68);
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let block = config_block(&a, "agt", "glas-harness", "demo", "consumer");
        assert!(block.contains(&token_sha256(&a)));
        assert!(block.contains("role = \"consumer\""));
    }
}
