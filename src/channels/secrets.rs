//! Credentials at rest: a channel's tokens are sealed with AES-256-GCM under a key kept in
//! `<data-dir>/keys/channels.key` (owner-only), so a copy of the database alone reveals none.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Seals and opens credentials. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

impl Sealer {
    pub fn load_or_create(keys_dir: &Path) -> anyhow::Result<Sealer> {
        Sealer::load_or_create_named(keys_dir, "channels.key")
    }

    /// A sealer with its own key file (two-step sign-in's secrets use `mfa.key`).
    pub fn load_or_create_named(keys_dir: &Path, file_name: &str) -> anyhow::Result<Sealer> {
        let key = crate::auth::tokens::load_or_create_key(keys_dir, file_name)?;
        Ok(Sealer::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> Sealer {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key");
        Sealer {
            key: std::sync::Arc::new(LessSafeKey::new(key)),
        }
    }

    /// `nonce ‖ ciphertext ‖ tag`. `context` (tenant and channel) is bound in, so sealed
    /// credentials copied to another tenant's row do not open.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::auth::random_bytes(&mut nonce);
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("sealing cannot fail for small inputs");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// `None` when the bytes were not sealed with this key and context.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_with_their_key_and_context() {
        let sealer = Sealer::from_key(&[7; 32]);
        let sealed = sealer.seal("t1/telegram", b"123:secret-token");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            sealer.open("t1/telegram", &sealed).as_deref(),
            Some(&b"123:secret-token"[..])
        );
        assert_eq!(sealer.open("t2/telegram", &sealed), None);
        assert_eq!(
            Sealer::from_key(&[8; 32]).open("t1/telegram", &sealed),
            None
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open("t1/telegram", &tampered), None);
    }
}
