//! Access tokens (EdDSA-signed JWTs with a `kid`) and opaque secrets (refresh tokens, API keys,
//! reset and invitation tokens), which are stored only as hashes.
//!
//! Signing keys live in `<data-dir>/keys/jwt-<kid>.pem` (owner-only). The newest key signs;
//! every key in the folder verifies, so a new key can be added without signing anyone out.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuthError, Role};

pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const ISSUER: &str = "companero";

/// What an access token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    pub role: Role,
    /// Instance owner.
    #[serde(default)]
    pub own: bool,
    /// Email, so logs and the audit trail can name the actor without a lookup.
    #[serde(default)]
    pub eml: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    /// The user's session generation when issued; signing out everywhere moves it on, which
    /// ends this token before it expires.
    #[serde(default)]
    pub sgn: i64,
}

pub struct TokenKeys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    /// Derives the secrets of links that are mailed later (invitations), from a reference.
    links: [u8; 32],
}

impl TokenKeys {
    /// Loads the keys in `dir`, creating the first one on first start.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<TokenKeys> {
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("jwt-") && n.ends_with(".pem"))
            })
            .collect();
        if files.is_empty() {
            files.push(create_key(dir)?);
        }
        // Key ids start with their creation time, so the last in name order is the newest.
        files.sort();
        let mut verifying = HashMap::new();
        let mut newest = None;
        for path in &files {
            let kid = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("jwt-"))
                .unwrap_or_default()
                .to_string();
            let pem = std::fs::read_to_string(path)?;
            let key = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("invalid signing key {}: {e}", path.display()))?;
            let public = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
            verifying.insert(kid.clone(), DecodingKey::from_ed_components(&public)?);
            newest = Some((kid, pem));
        }
        let (signing_kid, pem) = newest.expect("at least one key");
        Ok(TokenKeys {
            signing: EncodingKey::from_ed_pem(pem.as_bytes())?,
            signing_kid,
            verifying,
            links: load_or_create_link_key(dir)?,
        })
    }

    /// The secret of a link, derived from what it refers to (an invitation's id): the same
    /// every time, and nobody can compute it without the key file, which is not in the
    /// database. So a mail queued as a job holds only the reference, and the link is made
    /// again when the mail goes out.
    pub fn link_secret(&self, prefix: &str, reference: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.links).expect("any key length works");
        mac.update(prefix.as_bytes());
        mac.update(b":");
        mac.update(reference.as_bytes());
        format!(
            "{prefix}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    pub fn issue(
        &self,
        user_id: &str,
        email: &str,
        tenant_id: &str,
        role: Role,
        owner: bool,
        generation: i64,
    ) -> String {
        let now = unix_now();
        let claims = AccessClaims {
            sub: user_id.to_string(),
            tid: tenant_id.to_string(),
            role,
            own: owner,
            eml: email.to_string(),
            iat: now,
            exp: now + ACCESS_TOKEN_LIFETIME.as_secs(),
            iss: ISSUER.to_string(),
            sgn: generation,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing_kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing).expect("signing with a valid key")
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Unauthorized)?;
        let key = header
            .kid
            .as_ref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(AuthError::Unauthorized)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| AuthError::Unauthorized)
    }
}

fn create_key(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut seed = [0u8; 32];
    super::random_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode signing key: {e}"))?;
    let kid = format!("{}-{}", unix_now(), &secret_token("")[..8]);
    let path = dir.join(format!("jwt-{kid}.pem"));
    write_private(&path, pem.as_bytes())?;
    Ok(path)
}

/// The key of derived link secrets, `<keys>/links.key` (owner-only), created on first start.
fn load_or_create_link_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    load_or_create_key(dir, "links.key")
}

/// A 32-byte key kept in `<keys>/<file_name>` (owner-only, base64), created on first use.
pub fn load_or_create_key(dir: &Path, file_name: &str) -> anyhow::Result<[u8; 32]> {
    let path = dir.join(file_name);
    if !path.exists() {
        let mut key = [0u8; 32];
        super::random_bytes(&mut key);
        write_private(&path, URL_SAFE_NO_PAD.encode(key).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path)?;
    URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| anyhow::anyhow!("invalid key file {}", path.display()))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// A new random secret with a recognisable prefix (`rt_` refresh token, `cmp_` API key...).
pub fn secret_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    super::random_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// How secrets are stored: SHA-256, hex. They are long random strings, so a fast hash is right
/// (there is nothing to brute-force, unlike a password).
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares a presented secret with the expected one without leaking, through timing, how much
/// of it matched: both are hashed first.
pub fn constant_time_eq(expected: &str, presented: &str) -> bool {
    secret_hash(expected) == secret_hash(presented)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_with_the_same_keys_only_and_carry_a_kid() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let token = keys.issue("u1", "u1@example.com", "t1", Role::Admin, true, 0);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid.as_str()));
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.tid.as_str()), ("u1", "t1"));
        assert!(claims.own);

        // The same folder again: the same key, so earlier tokens still verify.
        let reloaded = TokenKeys::load_or_create(dir.path()).unwrap();
        assert!(reloaded.verify(&token).is_ok());

        let other = tempfile::tempdir().unwrap();
        let stranger = TokenKeys::load_or_create(other.path()).unwrap();
        assert!(stranger.verify(&token).is_err());
        let mut tampered = token.clone();
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert!(keys.verify(&tampered).is_err());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = std::fs::read_dir(dir.path())
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let a = secret_token("rt_");
        assert!(a.starts_with("rt_") && a.len() > 40);
        assert_ne!(a, secret_token("rt_"));
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_eq!(secret_hash(&a).len(), 64);
    }
}
