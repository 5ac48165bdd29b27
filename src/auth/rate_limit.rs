//! Rate limits, each with its own budget so that one kind of traffic never uses up another's:
//!
//! - sign-in, registration and reset attempts per client network (IPv4 address, IPv6 /64);
//! - failed sign-ins per account *and* network, with a growing delay ([`LoginThrottle`]), and a
//!   global lock of the account only at a much higher count, so nobody can lock a victim out
//!   by guessing from their own address;
//! - authenticated (staff and API key) requests per tenant;
//! - public traffic: new visitors per network (a school or an office shares one address),
//!   requests per visitor, and all public requests of a tenant, never charged to staff.
//!
//! Exceeding one answers 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AuthError;

/// Requests per minute, configurable with `serve` flags.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Sign-in, registration and reset attempts per client network.
    pub auth_per_ip: u32,
    /// Reset emails per account (whatever the address): a mailbox is not flooded.
    pub resets_per_account: u32,
    /// Authenticated API requests per tenant.
    pub api_per_tenant: u32,
    /// Public (end-user) requests per tenant.
    pub public_per_tenant: u32,
    /// Requests per end user.
    pub per_visitor: u32,
    /// New end users per client network.
    pub new_visitors_per_ip: u32,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            auth_per_ip: 20,
            resets_per_account: 5,
            api_per_tenant: 6000,
            public_per_tenant: 3000,
            per_visitor: 120,
            new_visitors_per_ip: 60,
        }
    }
}

/// The unit limits count per: an IPv4 address, or an IPv6 /64 (one household or customer gets
/// a whole /64, so single IPv6 addresses are free to rotate).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[derive(Clone)]
pub struct Limiters {
    auth_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    resets: Arc<DefaultKeyedRateLimiter<String>>,
    api_tenant: Arc<DefaultKeyedRateLimiter<String>>,
    public_tenant: Arc<DefaultKeyedRateLimiter<String>>,
    visitor: Arc<DefaultKeyedRateLimiter<String>>,
    new_visitors: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    pub logins: Arc<LoginThrottle>,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least one"))
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Limiters {
        Limiters {
            auth_ip: Arc::new(RateLimiter::keyed(per_minute(limits.auth_per_ip))),
            resets: Arc::new(RateLimiter::keyed(Quota::per_hour(
                NonZeroU32::new(limits.resets_per_account.max(1)).expect("≥1"),
            ))),
            api_tenant: Arc::new(RateLimiter::keyed(per_minute(limits.api_per_tenant))),
            public_tenant: Arc::new(RateLimiter::keyed(per_minute(limits.public_per_tenant))),
            visitor: Arc::new(RateLimiter::keyed(per_minute(limits.per_visitor))),
            new_visitors: Arc::new(RateLimiter::keyed(per_minute(limits.new_visitors_per_ip))),
            logins: Arc::new(LoginThrottle::default()),
        }
    }

    /// An attempt at a sign-in-like route (login, register, reset) from `ip`.
    pub fn check_auth(&self, ip: Option<IpAddr>) -> Result<(), AuthError> {
        match ip {
            Some(ip) => check(&self.auth_ip, &network_of(ip)),
            None => Ok(()),
        }
    }

    /// A reset email for `account` (any string: unknown emails count the same way).
    pub fn check_reset(&self, account: &str) -> Result<(), AuthError> {
        check(&self.resets, &account.trim().to_lowercase())
    }

    /// A request by a member or API key of the tenant.
    pub fn check_tenant(&self, tenant_id: &str) -> Result<(), AuthError> {
        check(&self.api_tenant, &tenant_id.to_string())
    }

    /// A request by an end user of the tenant.
    pub fn check_visitor(&self, tenant_id: &str, visitor_id: &str) -> Result<(), AuthError> {
        check(&self.visitor, &visitor_id.to_string())?;
        self.check_public(tenant_id)
    }

    /// Public traffic of the tenant (coach page, new visitors, end users' requests).
    pub fn check_public(&self, tenant_id: &str) -> Result<(), AuthError> {
        check(&self.public_tenant, &tenant_id.to_string())
    }

    /// A new end user from `ip`.
    pub fn check_new_visitor(&self, ip: Option<IpAddr>) -> Result<(), AuthError> {
        match ip {
            Some(ip) => check(&self.new_visitors, &network_of(ip)),
            None => Ok(()),
        }
    }

    /// Forgets idle keys so memory stays bounded; call now and then.
    pub fn prune(&self) {
        self.auth_ip.retain_recent();
        self.resets.retain_recent();
        self.api_tenant.retain_recent();
        self.public_tenant.retain_recent();
        self.visitor.retain_recent();
        self.new_visitors.retain_recent();
        self.logins.prune();
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

/// Failed sign-ins free of delay, per account and network.
const FREE_FAILURES: u32 = 5;
/// The first delay after them; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_secs(1);
const LONGEST_DELAY: Duration = Duration::from_secs(15 * 60);
/// Failures from all networks together that lock the account itself.
pub const ACCOUNT_LOCK_FAILURES: u32 = 100;
const ACCOUNT_LOCK: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const MEMORY: Duration = Duration::from_secs(3600);
/// Entries kept at most; past it the oldest half-hour is dropped early.
const MAX_ENTRIES: usize = 100_000;

/// Failed sign-ins, kept in memory for any email string (an account that does not exist is
/// throttled exactly like one that does, so answers never tell them apart).
#[derive(Default)]
pub struct LoginThrottle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    pairs: HashMap<(String, IpAddr), Failures>,
    accounts: HashMap<String, Failures>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn fresh(now: Instant) -> Failures {
        Failures {
            count: 0,
            last: now,
            blocked_until: None,
        }
    }

    fn wait(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

impl LoginThrottle {
    /// May `email` try to sign in from `ip` now? Refused while a delay or lock runs.
    pub fn check(&self, email: &str, ip: Option<IpAddr>) -> Result<(), AuthError> {
        let now = Instant::now();
        let state = self.state.lock().expect("throttle lock");
        let pair = ip.and_then(|ip| state.pairs.get(&(email.to_string(), network_of(ip))));
        let account = state.accounts.get(email);
        let wait = [pair, account]
            .into_iter()
            .flatten()
            .filter_map(|f| f.wait(now))
            .max();
        match wait {
            Some(wait) => Err(AuthError::RateLimited {
                retry_after: wait.max(Duration::from_secs(1)),
            }),
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in; returns the failures of this account and network in a row.
    pub fn failed(&self, email: &str, ip: Option<IpAddr>) -> u32 {
        let now = Instant::now();
        let mut state = self.state.lock().expect("throttle lock");
        if state.pairs.len() + state.accounts.len() > MAX_ENTRIES {
            let cutoff = now - MEMORY / 2;
            state.pairs.retain(|_, f| f.last > cutoff);
            state.accounts.retain(|_, f| f.last > cutoff);
        }
        let account = state
            .accounts
            .entry(email.to_string())
            .or_insert_with(|| Failures::fresh(now));
        bump(account, now);
        if account.count >= ACCOUNT_LOCK_FAILURES {
            account.blocked_until = Some(now + ACCOUNT_LOCK);
            account.count = 0;
        }
        let Some(ip) = ip else { return 0 };
        let pair = state
            .pairs
            .entry((email.to_string(), network_of(ip)))
            .or_insert_with(|| Failures::fresh(now));
        bump(pair, now);
        if pair.count >= FREE_FAILURES {
            let doublings = (pair.count - FREE_FAILURES).min(20);
            let delay = FIRST_DELAY
                .saturating_mul(1u32 << doublings)
                .min(LONGEST_DELAY);
            pair.blocked_until = Some(now + delay);
        }
        pair.count
    }

    /// A successful sign-in clears this network's failures and the account's count.
    pub fn succeeded(&self, email: &str, ip: Option<IpAddr>) {
        let mut state = self.state.lock().expect("throttle lock");
        if let Some(ip) = ip {
            state.pairs.remove(&(email.to_string(), network_of(ip)));
        }
        if let Some(account) = state.accounts.get_mut(email)
            && account.blocked_until.is_none()
        {
            account.count = 0;
        }
    }

    fn prune(&self) {
        let cutoff = Instant::now() - MEMORY;
        let mut state = self.state.lock().expect("throttle lock");
        let keep = |f: &mut Failures| {
            f.last > cutoff || f.blocked_until.is_some_and(|u| u > Instant::now())
        };
        state.pairs.retain(|_, f| keep(f));
        state.accounts.retain(|_, f| keep(f));
    }
}

/// One more failure; a long quiet spell starts the count again.
fn bump(failures: &mut Failures, now: Instant) {
    if now.duration_since(failures.last) > MEMORY {
        *failures = Failures::fresh(now);
    }
    failures.count += 1;
    failures.last = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_network() {
        let limiters = Limiters::new(RateLimits {
            auth_per_ip: 3,
            ..RateLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limiters.check_auth(Some(a)).unwrap();
        }
        match limiters.check_auth(Some(a)) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        limiters
            .check_auth(Some(b))
            .expect("another IP is not affected");
        // IPv6 addresses of one /64 share a budget; another /64 has its own.
        let same: Vec<IpAddr> = [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "2001:db8:1:2::77",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for ip in &same {
            limiters.check_auth(Some(*ip)).unwrap();
        }
        assert!(
            limiters
                .check_auth(Some("2001:db8:1:2::abcd".parse().unwrap()))
                .is_err()
        );
        limiters
            .check_auth(Some("2001:db8:1:3::1".parse().unwrap()))
            .expect("another /64");
    }

    #[test]
    fn visitors_never_use_up_the_staff_budget() {
        let limiters = Limiters::new(RateLimits {
            public_per_tenant: 5,
            api_per_tenant: 5,
            ..RateLimits::default()
        });
        for i in 0..5 {
            limiters.check_visitor("t", &format!("v{i}")).unwrap();
        }
        assert!(
            limiters.check_visitor("t", "v9").is_err(),
            "public budget spent"
        );
        for _ in 0..5 {
            limiters.check_tenant("t").expect("staff unaffected");
        }
    }

    #[test]
    fn failures_delay_one_network_and_lock_the_account_only_much_later() {
        let throttle = LoginThrottle::default();
        let attacker: IpAddr = "198.51.100.7".parse().unwrap();
        let owner: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..FREE_FAILURES - 1 {
            throttle.check("ana@x.com", Some(attacker)).unwrap();
            throttle.failed("ana@x.com", Some(attacker));
        }
        throttle.check("ana@x.com", Some(attacker)).unwrap();
        throttle.failed("ana@x.com", Some(attacker));
        assert!(
            throttle.check("ana@x.com", Some(attacker)).is_err(),
            "delayed"
        );
        throttle
            .check("ana@x.com", Some(owner))
            .expect("the owner's own network is not delayed");
        // Past the account threshold (from many networks) the account itself locks.
        for i in 0..ACCOUNT_LOCK_FAILURES {
            let ip: IpAddr = format!("10.1.{}.{}", i / 250, i % 250).parse().unwrap();
            throttle.failed("bob@x.com", Some(ip));
        }
        assert!(throttle.check("bob@x.com", Some(owner)).is_err());
        // Unknown and known emails are the same to the throttle.
        throttle.check("nobody@x.com", Some(owner)).unwrap();
    }
}
