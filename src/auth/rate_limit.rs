//! Rate limits: tight ones for sign-in, registration, password reset and public (visitor)
//! routes, keyed by client IP and by account; a generous one per tenant for authenticated work
//! (bulk uploads must not trip it). Exceeding one answers 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AuthError;

/// Requests per minute, configurable with `serve` flags.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Sign-in, registration and reset attempts per client IP.
    pub auth_per_ip: u32,
    /// Sign-in and reset attempts per account (email).
    pub auth_per_account: u32,
    /// Authenticated API requests per tenant.
    pub api_per_tenant: u32,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            auth_per_ip: 20,
            auth_per_account: 10,
            api_per_tenant: 6000,
        }
    }
}

#[derive(Clone)]
pub struct Limiters {
    auth_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    auth_account: Arc<DefaultKeyedRateLimiter<String>>,
    api_tenant: Arc<DefaultKeyedRateLimiter<String>>,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least one"))
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Limiters {
        Limiters {
            auth_ip: Arc::new(RateLimiter::keyed(per_minute(limits.auth_per_ip))),
            auth_account: Arc::new(RateLimiter::keyed(per_minute(limits.auth_per_account))),
            api_tenant: Arc::new(RateLimiter::keyed(per_minute(limits.api_per_tenant))),
        }
    }

    /// An attempt at a sign-in-like route from `ip`, for `account` when the body names one.
    pub fn check_auth(&self, ip: Option<IpAddr>, account: Option<&str>) -> Result<(), AuthError> {
        if let Some(ip) = ip {
            check(&self.auth_ip, &ip)?;
        }
        if let Some(account) = account {
            check(&self.auth_account, &account.trim().to_lowercase())?;
        }
        Ok(())
    }

    pub fn check_tenant(&self, tenant_id: &str) -> Result<(), AuthError> {
        check(&self.api_tenant, &tenant_id.to_string())
    }

    /// Forgets idle keys so memory stays bounded; call now and then.
    pub fn prune(&self) {
        self.auth_ip.retain_recent();
        self.auth_account.retain_recent();
        self.api_tenant.retain_recent();
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), AuthError> {
    limiter
        .check_key(key)
        .map_err(|not_until| AuthError::RateLimited {
            retry_after: not_until
                .wait_time_from(DefaultClock::default().now())
                .max(Duration::from_secs(1)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_key() {
        let limiters = Limiters::new(RateLimits {
            auth_per_ip: 3,
            auth_per_account: 100,
            api_per_tenant: 100,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limiters.check_auth(Some(a), None).unwrap();
        }
        match limiters.check_auth(Some(a), None) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        limiters
            .check_auth(Some(b), None)
            .expect("another IP is not affected");
    }
}
