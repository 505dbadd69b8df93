//! API key secrets and scopes.
//!
//! A key is `hfk_` followed by 43 characters of URL-safe base64 (32 random
//! bytes). Only its SHA-256 is stored: the secret has 256 bits of entropy, so
//! a slow password hash would add latency to every request and no safety.

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "hfk_";

/// What a key may do inside its workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything in the workspace.
    Admin,
    /// Only inbound calls and events.
    Ingest,
}

crate::stored_enum!(Scope, "key scope", {
    Admin => "admin",
    Ingest => "ingest",
});

/// A freshly generated key: the secret is shown once, then dropped.
pub struct ApiKeySecret {
    secret: String,
}

impl ApiKeySecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self {
            secret: format!("{KEY_PREFIX}{body}"),
        }
    }

    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// The first characters, kept in clear so that people can tell keys apart.
    pub fn display_prefix(&self) -> String {
        self.secret[..KEY_PREFIX.len() + 6].to_owned()
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_presented(&self.secret)
    }
}

/// Hash of a key as presented by a client, for lookup.
pub fn hash_presented(presented: &str) -> Vec<u8> {
    Sha256::digest(presented.as_bytes()).to_vec()
}

/// Constant-time comparison of two key hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_prefixed_and_hash_stably() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 43);
        assert!(hashes_match(&a.hash(), &hash_presented(a.expose())));
        assert!(!hashes_match(&a.hash(), &b.hash()));
    }
}
