//! Password hashing (Argon2id) and strength rules.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use super::AuthError;

pub const MIN_LENGTH: usize = 10;
/// zxcvbn's scale is 0..=4; 3 is "safely unguessable: moderate protection from offline attacks".
const MIN_SCORE: u8 = 3;

/// Argon2id with 32 MiB and 3 passes: about 100 ms per hash on this project's 2-core machines
/// (measured; see `hashing_takes_a_deliberate_amount_of_time`), in the 50-250 ms band that
/// makes guessing expensive without making sign-in feel slow.
fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(32 * 1024, 3, 1, None).expect("valid Argon2 parameters"),
    )
}

/// Hashes a password into a PHC string (algorithm, parameters and salt included).
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    super::random_bytes(&mut salt);
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("hashing never fails with valid parameters")
        .to_string()
}

/// Checks a password against a stored hash (whatever parameters it was made with).
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so that "no such user" takes as
/// long as "wrong password" and response times do not reveal which emails are registered.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not a real password, only for timing"))
}

/// Refuses weak passwords with a message that says why. `context` holds the user's email and
/// name, which make a password easy to guess.
pub fn check_strength(password: &str, context: &[&str]) -> Result<(), AuthError> {
    if password.chars().count() < MIN_LENGTH {
        return Err(AuthError::WeakPassword(format!(
            "use at least {MIN_LENGTH} characters; a few unrelated words make a strong, memorable password"
        )));
    }
    let estimate = zxcvbn::zxcvbn(password, context);
    if u8::from(estimate.score()) >= MIN_SCORE {
        return Ok(());
    }
    let mut reasons = Vec::new();
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            reasons.push(warning.to_string());
        }
        reasons.extend(feedback.suggestions().iter().map(|s| s.to_string()));
    }
    if reasons.is_empty() {
        reasons.push("it would be guessed quickly".to_string());
    }
    Err(AuthError::WeakPassword(format!(
        "this password is too easy to guess: {}",
        reasons.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("correct horse battery staple");
        let b = hash("correct horse battery staple");
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify("correct horse battery staple", &a));
        assert!(!verify("correct horse battery stapler", &a));
        assert!(!verify("anything", "not a hash"));
    }

    #[test]
    fn hashing_takes_a_deliberate_amount_of_time() {
        let started = std::time::Instant::now();
        hash("timing check password");
        let took = started.elapsed();
        // Generous bounds: this guards against parameters that are trivially cheap or absurd.
        assert!(took > std::time::Duration::from_millis(15), "{took:?}");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        let short = check_strength("abc123", &[]).unwrap_err().to_string();
        assert!(short.contains("at least 10"), "{short}");
        let common = check_strength("password123", &[]).unwrap_err().to_string();
        assert!(common.contains("too easy to guess"), "{common}");
        let personal = check_strength("maria.lopez@x.com1", &["maria.lopez@x.com"]);
        assert!(personal.is_err());
        assert!(check_strength("violet tractor sings at noon", &[]).is_ok());
    }
}
