//! Pure time logic for the coaching scheduler: parsing schedule fields and
//! computing the next instants. No I/O, so every rule here is unit-testable.
//!
//! Everything is stored and compared as UTC instants; local wall-clock time is
//! only used to decide *which* instant a schedule means for a user's zone.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use rrule::{Frequency, RRule, RRuleSet, Unvalidated};

/// A schedule field that failed to parse; `field` names it (e.g. "at", "time_zone", "rrule", "every").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: String,
    pub message: String,
}

impl ScheduleError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        ScheduleError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A wall-clock time "HH:MM" (00:00..23:59), two digits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime {
    pub hour: u32,
    pub minute: u32,
}

impl LocalTime {
    /// Strict "HH:MM" so stored schedules have one canonical spelling.
    pub fn parse(field: &str, text: &str) -> Result<LocalTime, ScheduleError> {
        let bad =
            || ScheduleError::new(field, format!("expected HH:MM (00:00-23:59), got {text:?}"));
        let b = text.as_bytes();
        if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
            return Err(bad());
        }
        let digits = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
        let (hour, minute) = (digits(0), digits(3));
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(LocalTime { hour, minute })
    }

    pub fn to_naive(self) -> NaiveTime {
        NaiveTime::from_hms_opt(self.hour, self.minute, 0).expect("LocalTime is always in range")
    }
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// An IANA zone name ("Europe/Madrid", "UTC"); bad names give ScheduleError{field}.
pub fn parse_time_zone(field: &str, name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        ScheduleError::new(
            field,
            format!("unknown IANA time zone {name:?} (e.g. \"Europe/Madrid\", \"UTC\")"),
        )
    })
}

/// An ISO 8601 duration of whole days or weeks: "P1D", "P7D", "P2W", "P1W" -> number of days (1..=366).
/// Anything else (P0D, PT1H, P1M, garbage) is an error: repeats are per local day, so
/// sub-day or calendar-month lengths have no fixed meaning here.
pub fn parse_every(field: &str, text: &str) -> Result<u32, ScheduleError> {
    let bad = |why: &str| ScheduleError::new(field, format!("{why}, got {text:?}"));
    let body = text
        .strip_prefix('P')
        .ok_or_else(|| bad("expected an ISO 8601 duration like P1D or P2W"))?;
    let (num, unit) = body.split_at(body.len().saturating_sub(1));
    let per = match unit {
        "D" => 1,
        "W" => 7,
        _ => return Err(bad("expected whole days or weeks (PnD or PnW)")),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad("expected whole days or weeks (PnD or PnW)"));
    }
    let days = num
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(per))
        .filter(|d| (1..=366).contains(d))
        .ok_or_else(|| bad("must be between 1 and 366 days"))?;
    Ok(days)
}

/// The instant of local `time` on local `date` in `tz`. In a DST gap (the time does not exist) it is the first
/// instant after the gap (e.g. 02:30 on a spring-forward night in Europe/Madrid -> 03:00 local); when ambiguous
/// (fall back) the earlier instant. Total, so a schedule never silently skips a day.
pub fn at_local(tz: Tz, date: NaiveDate, time: LocalTime) -> DateTime<Utc> {
    let naive = date.and_time(time.to_naive());
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        chrono::LocalResult::None => gap_end(tz, naive),
    }
}

/// First instant whose local time is >= `naive` (which lies in a gap): the transition instant.
fn gap_end(tz: Tz, naive: NaiveDateTime) -> DateTime<Utc> {
    let offset_secs =
        |t: NaiveDateTime| i64::from(tz.offset_from_utc_datetime(&t).fix().local_minus_utc());
    // Offsets on either side of the gap bound where the transition can be.
    let (a, b) = (
        offset_secs(naive - Duration::days(1)),
        offset_secs(naive + Duration::days(1)),
    );
    let (mut lo, mut hi) = if a != b {
        let naive_secs = naive.and_utc().timestamp();
        (naive_secs - a.max(b), naive_secs - a.min(b))
    } else {
        let naive_secs = naive.and_utc().timestamp();
        (naive_secs - 15 * 3600, naive_secs + 15 * 3600)
    };
    let reaches = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .map(|t| t.with_timezone(&tz).naive_local() >= naive)
            .unwrap_or(true)
    };
    // Invariant: !reaches(lo), reaches(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reaches(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).expect("timestamp in range")
}

/// The local calendar date of an instant.
pub fn local_date(tz: Tz, instant: DateTime<Utc>) -> NaiveDate {
    instant.with_timezone(&tz).date_naive()
}

/// The first instant >= `after` that is local `time` on a day `date0 + k*every_days` (k >= 0), i.e. a repeating
/// local-time schedule anchored at local date `date0`. Counting in local days keeps 09:00 at 09:00 across DST.
pub fn next_repeat(
    tz: Tz,
    date0: NaiveDate,
    every_days: u32,
    time: LocalTime,
    after: DateTime<Utc>,
) -> DateTime<Utc> {
    let every = i64::from(every_days.max(1));
    let elapsed = (local_date(tz, after) - date0).num_days();
    // Start one period early: a DST gap can push an instant onto the next local day.
    let mut k = if elapsed > 0 { elapsed / every - 1 } else { 0 }.max(0);
    loop {
        let candidate = at_local(tz, date0 + Duration::days(k * every), time);
        if candidate >= after {
            return candidate;
        }
        k += 1;
    }
}

/// Quiet hours in the user's local time; start > end means they span midnight (default 21:00-08:00).
/// start == end means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: LocalTime,
    pub end: LocalTime,
}

impl Default for QuietHours {
    fn default() -> Self {
        QuietHours {
            start: LocalTime {
                hour: 21,
                minute: 0,
            },
            end: LocalTime { hour: 8, minute: 0 },
        }
    }
}

impl QuietHours {
    /// Parses "21:00-08:00".
    pub fn parse(field: &str, text: &str) -> Result<QuietHours, ScheduleError> {
        let (start, end) = text.split_once('-').ok_or_else(|| {
            ScheduleError::new(field, format!("expected HH:MM-HH:MM, got {text:?}"))
        })?;
        Ok(QuietHours {
            start: LocalTime::parse(field, start)?,
            end: LocalTime::parse(field, end)?,
        })
    }

    /// Some(end of these quiet hours as an instant) when `instant` falls inside them (start inclusive, end
    /// exclusive), else None. E.g. 23:30 local with 21:00-08:00 -> next local day's 08:00; 06:00 -> same day's
    /// 08:00. Lets a nudge due at night be deferred rather than dropped.
    pub fn deferral(&self, tz: Tz, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.start == self.end {
            return None;
        }
        let local = instant.with_timezone(&tz);
        let (date, now) = (local.date_naive(), local.time());
        let (start, end) = (self.start.to_naive(), self.end.to_naive());
        let end_date = if self.start < self.end {
            (start <= now && now < end).then_some(date)?
        } else if now >= start {
            date.succ_opt()?
        } else if now < end {
            date
        } else {
            return None;
        };
        let resume = at_local(tz, end_date, self.end);
        if resume > instant {
            return Some(resume);
        }
        // Fall-back night: we are in the repeated hour, so the later reading of `end` is the real one.
        tz.from_local_datetime(&end_date.and_time(end))
            .latest()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t > instant)
    }
}

impl std::fmt::Display for QuietHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// How an RRULE's UNTIL was written; kept apart so it can be mapped into each user's zone.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// "...Z": an absolute instant.
    Instant(DateTime<Utc>),
    /// Floating date-time or a plain date (inclusive through that day): the user's wall clock.
    Local(NaiveDateTime),
}

/// A validated RFC 5545 recurrence rule ("FREQ=WEEKLY;BYDAY=MO", "FREQ=DAILY", "FREQ=MONTHLY;BYMONTHDAY=1",
/// with or without a leading "RRULE:") fired at local `at` in the user's zone.
#[derive(Debug, Clone)]
pub struct Recurrence {
    /// The rule without UNTIL (re-added per zone in `next_after`).
    rule: RRule<Unvalidated>,
    until: Option<Until>,
    at: LocalTime,
}

const RRULE_FIELD: &str = "rrule";

impl Recurrence {
    /// Rejects what would make the rule ambiguous with the schedule's own fields: DTSTART (the start is the
    /// anchor), sub-daily FREQ and BYHOUR/BYMINUTE/BYSECOND (the time of day is `at`).
    pub fn parse(rrule: &str, at: LocalTime) -> Result<Recurrence, ScheduleError> {
        let err = |m: String| ScheduleError::new(RRULE_FIELD, m);
        let text = rrule.trim();
        let text = match text.get(..6) {
            Some(p) if p.eq_ignore_ascii_case("RRULE:") => &text[6..],
            _ => text,
        };
        if text.contains(['\n', '\r']) || text.to_ascii_uppercase().contains("DTSTART") {
            return Err(err(
                "must be a single RRULE without DTSTART; the start comes from the schedule".into(),
            ));
        }
        if text.is_empty() || text.contains(':') {
            return Err(err(format!(
                "expected a rule like FREQ=WEEKLY;BYDAY=MO, got {rrule:?}"
            )));
        }
        let mut parts = Vec::new();
        let mut until = None;
        for part in text.split(';') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let key_uc = key.trim().to_ascii_uppercase();
            match key_uc.as_str() {
                "BYHOUR" | "BYMINUTE" | "BYSECOND" => {
                    return Err(err(format!(
                        "{key_uc} is not allowed; the time of day comes from `at` ({at})"
                    )));
                }
                "UNTIL" => until = Some(parse_until(value.trim()).map_err(err)?),
                _ => parts.push(part),
            }
        }
        let rule: RRule<Unvalidated> = parts
            .join(";")
            .parse()
            .map_err(|e: rrule::RRuleError| err(format!("invalid rule {rrule:?}: {e}")))?;
        let freq = rule.get_freq();
        if matches!(
            freq,
            Frequency::Hourly | Frequency::Minutely | Frequency::Secondly
        ) {
            return Err(err(format!(
                "FREQ={freq} is finer than a day; use DAILY or coarser"
            )));
        }
        if rule.get_interval() == 0 {
            return Err(err("INTERVAL must be at least 1".into()));
        }
        if until.is_some() && rule.get_count().is_some() {
            return Err(err("COUNT and UNTIL cannot both be set (RFC 5545)".into()));
        }
        let recurrence = Recurrence { rule, until, at };
        // Let the crate validate the rest against a start far before any real UNTIL.
        let start = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        recurrence
            .rule_set(Tz::UTC, start)
            .map_err(|e| err(format!("invalid rule {rrule:?}: {e}")))?;
        Ok(recurrence)
    }

    /// The first occurrence strictly after `after`, for a user in `tz`, counting from `anchor` (the rule's start,
    /// e.g. when the rule was created or the user enrolled; occurrences before it never count). Each occurrence is
    /// at local `at` on the rule's dates, so a weekly 09:00 stays 09:00 local across DST changes. None if the rule
    /// has ended (COUNT/UNTIL).
    pub fn next_after(
        &self,
        tz: Tz,
        anchor: DateTime<Utc>,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut first_date = local_date(tz, anchor);
        if at_local(tz, first_date, self.at) < anchor {
            // So COUNT only counts occurrences at or after the anchor.
            first_date = first_date.succ_opt()?;
        }
        let set = self.rule_set(tz, first_date).ok()?;
        let until = match self.until {
            Some(Until::Instant(t)) => Some(t),
            _ => None,
        };
        // A day of slack: a DST gap can move an occurrence's instant relative to its wall-clock reading.
        let lower = after.max(anchor).with_timezone(&tz).naive_local() - Duration::days(1);
        let mut from = rrule::Tz::UTC.from_utc_datetime(&lower);
        const BATCH: u16 = 32;
        for _ in 0..64 {
            let result = set.clone().after(from).all(BATCH);
            for date in &result.dates {
                let instant = at_local(tz, date.date_naive(), self.at);
                if until.is_some_and(|u| instant > u) {
                    return None;
                }
                if instant > after && instant >= anchor {
                    return Some(instant);
                }
            }
            match result.dates.last() {
                Some(last) if result.dates.len() == usize::from(BATCH) => {
                    from = *last + Duration::seconds(1);
                }
                _ => return None,
            }
        }
        None
    }

    /// The rule in "wall-clock as UTC" space starting on local `first_date`. Doing the calendar work in a zone
    /// without DST means gap/overlap days are neither skipped nor doubled; `at_local` maps dates back to instants.
    fn rule_set(&self, tz: Tz, first_date: NaiveDate) -> Result<RRuleSet, rrule::RRuleError> {
        let wall = |n: NaiveDateTime| rrule::Tz::UTC.from_utc_datetime(&n);
        let mut rule = self.rule.clone();
        match self.until {
            Some(Until::Instant(t)) => rule = rule.until(wall(t.with_timezone(&tz).naive_local())),
            Some(Until::Local(n)) => rule = rule.until(wall(n)),
            None => {}
        }
        rule.build(wall(first_date.and_time(self.at.to_naive())))
    }
}

/// UNTIL as RFC 5545 writes it: YYYYMMDD, YYYYMMDDTHHMMSS or YYYYMMDDTHHMMSSZ.
fn parse_until(value: &str) -> Result<Until, String> {
    const DATE_TIME: &str = "%Y%m%dT%H%M%S";
    let parsed = if let Some(v) = value.strip_suffix(['Z', 'z']) {
        NaiveDateTime::parse_from_str(v, DATE_TIME)
            .ok()
            .map(|n| Until::Instant(n.and_utc()))
    } else if value.len() == 8 {
        let end_of_day = NaiveTime::from_hms_opt(23, 59, 59).expect("valid time");
        NaiveDate::parse_from_str(value, "%Y%m%d")
            .ok()
            .map(|d| Until::Local(d.and_time(end_of_day)))
    } else {
        NaiveDateTime::parse_from_str(value, DATE_TIME)
            .ok()
            .map(Until::Local)
    };
    parsed.ok_or_else(|| {
        format!("UNTIL={value:?} should be YYYYMMDD, YYYYMMDDTHHMMSS or YYYYMMDDTHHMMSSZ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    fn t(text: &str) -> LocalTime {
        LocalTime::parse("at", text).unwrap()
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn utc(y: i32, m: u32, day: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, day, h, min, 0).unwrap()
    }

    fn local(tz: Tz, y: i32, m: u32, day: u32, h: u32, min: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, m, day, h, min, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn offset_hours(tz: Tz, instant: DateTime<Utc>) -> i32 {
        instant.with_timezone(&tz).offset().fix().local_minus_utc() / 3600
    }

    const MADRID: Tz = chrono_tz::Europe::Madrid;
    const NEW_YORK: Tz = chrono_tz::America::New_York;

    #[test]
    fn local_time_parse() {
        assert_eq!(t("09:05"), LocalTime { hour: 9, minute: 5 });
        assert_eq!(t("00:00").to_string(), "00:00");
        assert_eq!(
            t("23:59").to_naive(),
            NaiveTime::from_hms_opt(23, 59, 0).unwrap()
        );
        for bad in [
            "9:00", "24:00", "12:60", "ab", "", "09:5", "09-05", "+9:00", "09:00 ",
        ] {
            let e = LocalTime::parse("at", bad).unwrap_err();
            assert_eq!(e.field, "at", "{bad}");
        }
        assert!(t("08:00") < t("21:00"));
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            parse_time_zone("time_zone", "Europe/Madrid").unwrap(),
            MADRID
        );
        assert_eq!(parse_time_zone("time_zone", "UTC").unwrap(), Tz::UTC);
        for bad in ["Mars/Olympus", "", "Europe/Madridd"] {
            let e = parse_time_zone("time_zone", bad).unwrap_err();
            assert_eq!(e.field, "time_zone");
            assert!(e.to_string().starts_with("time_zone: "));
        }
    }

    #[test]
    fn every() {
        assert_eq!(parse_every("every", "P1D"), Ok(1));
        assert_eq!(parse_every("every", "P7D"), Ok(7));
        assert_eq!(parse_every("every", "P1W"), Ok(7));
        assert_eq!(parse_every("every", "P2W"), Ok(14));
        assert_eq!(parse_every("every", "P366D"), Ok(366));
        for bad in [
            "PT1H",
            "P0D",
            "P1M",
            "x",
            "",
            "P",
            "PD",
            "P367D",
            "P-1D",
            "1D",
            "P99999999999D",
        ] {
            assert_eq!(
                parse_every("every", bad).unwrap_err().field,
                "every",
                "{bad}"
            );
        }
    }

    #[test]
    fn at_local_madrid_dst() {
        // Spring forward 2025-03-30: 02:00 -> 03:00.
        let gap = at_local(MADRID, d(2025, 3, 30), t("02:30"));
        assert_eq!(gap, utc(2025, 3, 30, 1, 0));
        assert_eq!(
            gap.with_timezone(&MADRID).time(),
            NaiveTime::from_hms_opt(3, 0, 0).unwrap()
        );
        // 09:00 stays 09:00 local; the offset changes from +1 to +2.
        let before = at_local(MADRID, d(2025, 3, 29), t("09:00"));
        let after = at_local(MADRID, d(2025, 3, 30), t("09:00"));
        assert_eq!(before, utc(2025, 3, 29, 8, 0));
        assert_eq!(after, utc(2025, 3, 30, 7, 0));
        assert_eq!(
            (offset_hours(MADRID, before), offset_hours(MADRID, after)),
            (1, 2)
        );
        // Fall back 2025-10-26: 02:30 happens twice; take the earlier (+2).
        assert_eq!(
            at_local(MADRID, d(2025, 10, 26), t("02:30")),
            utc(2025, 10, 26, 0, 30)
        );
        assert_eq!(
            at_local(MADRID, d(2025, 10, 26), t("09:00")),
            utc(2025, 10, 26, 8, 0)
        );
        assert_eq!(
            at_local(MADRID, d(2025, 10, 25), t("09:00")),
            utc(2025, 10, 25, 7, 0)
        );
    }

    #[test]
    fn at_local_new_york_dst() {
        // Spring forward 2025-03-09: 02:00 -> 03:00.
        assert_eq!(
            at_local(NEW_YORK, d(2025, 3, 9), t("02:30")),
            utc(2025, 3, 9, 7, 0)
        );
        let before = at_local(NEW_YORK, d(2025, 3, 8), t("09:00"));
        let after = at_local(NEW_YORK, d(2025, 3, 9), t("09:00"));
        assert_eq!(
            (before, after),
            (utc(2025, 3, 8, 14, 0), utc(2025, 3, 9, 13, 0))
        );
        // Fall back 2025-11-02: 01:30 happens twice; earlier is EDT (-4).
        assert_eq!(
            at_local(NEW_YORK, d(2025, 11, 2), t("01:30")),
            utc(2025, 11, 2, 5, 30)
        );
        let before = at_local(NEW_YORK, d(2025, 11, 1), t("09:00"));
        let after = at_local(NEW_YORK, d(2025, 11, 2), t("09:00"));
        assert_eq!(
            (before, after),
            (utc(2025, 11, 1, 13, 0), utc(2025, 11, 2, 14, 0))
        );
        assert_eq!(
            (
                offset_hours(NEW_YORK, before),
                offset_hours(NEW_YORK, after)
            ),
            (-4, -5)
        );
    }

    #[test]
    fn local_date_of_instant() {
        // 23:30 UTC is already the next day in Madrid.
        assert_eq!(local_date(MADRID, utc(2025, 6, 1, 23, 30)), d(2025, 6, 2));
        assert_eq!(local_date(NEW_YORK, utc(2025, 6, 2, 3, 0)), d(2025, 6, 1));
    }

    #[test]
    fn next_repeat_daily_across_dst() {
        let nine = t("09:00");
        let mut after = utc(2025, 3, 27, 0, 0);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let next = next_repeat(MADRID, d(2025, 3, 1), 1, nine, after);
            let l = next.with_timezone(&MADRID);
            assert_eq!((l.hour(), l.minute()), (9, 0));
            seen.push(l.date_naive());
            after = next + Duration::seconds(1);
        }
        let expected: Vec<_> = (27..=31)
            .map(|day| d(2025, 3, day))
            .chain([d(2025, 4, 1)])
            .collect();
        assert_eq!(seen, expected);
        // `after` itself counts (>=).
        let exact = at_local(MADRID, d(2025, 3, 30), nine);
        assert_eq!(next_repeat(MADRID, d(2025, 3, 1), 1, nine, exact), exact);
    }

    #[test]
    fn next_repeat_every_n_days() {
        let nine = t("09:00");
        // Before the anchor: the anchor day itself.
        assert_eq!(
            next_repeat(NEW_YORK, d(2025, 11, 1), 7, nine, utc(2025, 1, 1, 0, 0)),
            at_local(NEW_YORK, d(2025, 11, 1), nine)
        );
        // Just after the first: a week later, still 09:00 local after fall back.
        let next = next_repeat(NEW_YORK, d(2025, 11, 1), 7, nine, utc(2025, 11, 1, 13, 1));
        assert_eq!(next, utc(2025, 11, 8, 14, 0));
        // Every 14 days, asked mid-period.
        let next = next_repeat(MADRID, d(2025, 1, 1), 14, nine, utc(2025, 1, 20, 12, 0));
        assert_eq!(next, at_local(MADRID, d(2025, 1, 29), nine));
    }

    #[test]
    fn quiet_hours_across_midnight() {
        let q = QuietHours::parse("quiet_hours", "21:00-08:00").unwrap();
        assert_eq!(q, QuietHours::default());
        assert_eq!(q.to_string(), "21:00-08:00");
        let late = local(MADRID, 2025, 6, 10, 23, 30);
        assert_eq!(
            q.deferral(MADRID, late),
            Some(local(MADRID, 2025, 6, 11, 8, 0))
        );
        let early = local(MADRID, 2025, 6, 10, 6, 0);
        assert_eq!(
            q.deferral(MADRID, early),
            Some(local(MADRID, 2025, 6, 10, 8, 0))
        );
        let start = local(MADRID, 2025, 6, 10, 21, 0);
        assert_eq!(
            q.deferral(MADRID, start),
            Some(local(MADRID, 2025, 6, 11, 8, 0))
        );
        assert_eq!(q.deferral(MADRID, local(MADRID, 2025, 6, 10, 8, 0)), None);
        assert_eq!(q.deferral(MADRID, local(MADRID, 2025, 6, 10, 12, 0)), None);
        assert_eq!(q.deferral(MADRID, local(MADRID, 2025, 6, 10, 20, 59)), None);
    }

    #[test]
    fn quiet_hours_within_a_day_and_none() {
        let q = QuietHours::parse("quiet_hours", "13:00-15:30").unwrap();
        let lunch = local(NEW_YORK, 2025, 6, 10, 14, 0);
        assert_eq!(
            q.deferral(NEW_YORK, lunch),
            Some(local(NEW_YORK, 2025, 6, 10, 15, 30))
        );
        assert_eq!(
            q.deferral(NEW_YORK, local(NEW_YORK, 2025, 6, 10, 15, 30)),
            None
        );
        assert_eq!(
            q.deferral(NEW_YORK, local(NEW_YORK, 2025, 6, 10, 23, 0)),
            None
        );
        let none = QuietHours::parse("quiet_hours", "22:00-22:00").unwrap();
        assert_eq!(
            none.deferral(NEW_YORK, local(NEW_YORK, 2025, 6, 10, 22, 0)),
            None
        );
        for bad in ["21:00", "21:00-8:00", "x-y", ""] {
            assert_eq!(
                QuietHours::parse("quiet_hours", bad).unwrap_err().field,
                "quiet_hours"
            );
        }
    }

    #[test]
    fn recurrence_weekly_monday_new_york_across_november_dst() {
        let r = Recurrence::parse("RRULE:FREQ=WEEKLY;BYDAY=MO", t("09:00")).unwrap();
        let anchor = utc(2025, 10, 15, 12, 0); // a Wednesday
        let first = r.next_after(NEW_YORK, anchor, anchor).unwrap();
        assert_eq!(first, utc(2025, 10, 20, 13, 0)); // EDT
        let mut got = vec![first];
        for _ in 0..3 {
            got.push(
                r.next_after(NEW_YORK, anchor, *got.last().unwrap())
                    .unwrap(),
            );
        }
        assert_eq!(
            got,
            vec![
                utc(2025, 10, 20, 13, 0),
                utc(2025, 10, 27, 13, 0),
                utc(2025, 11, 3, 14, 0), // EST: still 09:00 local
                utc(2025, 11, 10, 14, 0),
            ]
        );
        for g in &got {
            let l = g.with_timezone(&NEW_YORK);
            assert_eq!((l.weekday(), l.hour(), l.minute()), (Weekday::Mon, 9, 0));
        }
        // `after` before the anchor still starts at the anchor.
        assert_eq!(
            r.next_after(NEW_YORK, anchor, utc(2020, 1, 1, 0, 0)),
            Some(first)
        );
        // Strictly after.
        assert_eq!(
            r.next_after(NEW_YORK, anchor, first - Duration::seconds(1)),
            Some(first)
        );
    }

    #[test]
    fn recurrence_daily_and_monthly() {
        let r = Recurrence::parse("FREQ=DAILY", t("02:30")).unwrap();
        let anchor = utc(2025, 3, 28, 12, 0);
        // The gap day is not skipped: 02:30 doesn't exist, so it fires at 03:00.
        let mut after = anchor;
        let mut got = Vec::new();
        for _ in 0..3 {
            after = r.next_after(MADRID, anchor, after).unwrap();
            got.push(after);
        }
        assert_eq!(
            got,
            vec![
                local(MADRID, 2025, 3, 29, 2, 30),
                local(MADRID, 2025, 3, 30, 3, 0),
                local(MADRID, 2025, 3, 31, 2, 30),
            ]
        );
        let m = Recurrence::parse("FREQ=MONTHLY;BYMONTHDAY=1", t("10:00")).unwrap();
        let anchor = utc(2025, 1, 15, 0, 0);
        let feb = m
            .next_after(MADRID, anchor, utc(2025, 1, 20, 0, 0))
            .unwrap();
        assert_eq!(feb, local(MADRID, 2025, 2, 1, 10, 0));
        assert_eq!(
            m.next_after(MADRID, anchor, feb),
            Some(local(MADRID, 2025, 3, 1, 10, 0))
        );
    }

    #[test]
    fn recurrence_count_and_until_end() {
        let r = Recurrence::parse("FREQ=DAILY;COUNT=2", t("09:00")).unwrap();
        // The anchor is after today's 09:00, so counting starts tomorrow.
        let anchor = local(MADRID, 2025, 5, 1, 10, 0);
        let a = r.next_after(MADRID, anchor, anchor).unwrap();
        let b = r.next_after(MADRID, anchor, a).unwrap();
        assert_eq!(
            (a, b),
            (
                local(MADRID, 2025, 5, 2, 9, 0),
                local(MADRID, 2025, 5, 3, 9, 0)
            )
        );
        assert_eq!(r.next_after(MADRID, anchor, b), None);

        let u = Recurrence::parse("FREQ=DAILY;UNTIL=20250503", t("09:00")).unwrap();
        let last = u.next_after(MADRID, anchor, a).unwrap();
        assert_eq!(last, local(MADRID, 2025, 5, 3, 9, 0));
        assert_eq!(u.next_after(MADRID, anchor, last), None);
        let z = Recurrence::parse("FREQ=DAILY;UNTIL=20250503T070000Z", t("09:00")).unwrap();
        assert_eq!(z.next_after(MADRID, anchor, a), Some(last)); // 09:00 CEST == 07:00Z
        assert_eq!(z.next_after(MADRID, anchor, last), None);
        // Anchor after UNTIL: nothing left.
        assert_eq!(
            z.next_after(MADRID, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn recurrence_rejects() {
        let at = t("09:00");
        let msg = |rule: &str| {
            let e = Recurrence::parse(rule, at).unwrap_err();
            assert_eq!(e.field, "rrule", "{rule}");
            e.message
        };
        assert_eq!(
            msg("FREQ=HOURLY"),
            "FREQ=HOURLY is finer than a day; use DAILY or coarser"
        );
        assert!(msg("FREQ=MINUTELY").contains("finer than a day"));
        assert!(msg("RRULE:FREQ=SECONDLY").contains("finer than a day"));
        assert!(msg("FREQ=DAILY;BYHOUR=9").contains("BYHOUR is not allowed"));
        assert!(msg("FREQ=DAILY;BYMINUTE=5").contains("BYMINUTE"));
        assert!(msg("FREQ=DAILY;BYSECOND=5").contains("BYSECOND"));
        assert!(msg("DTSTART:20250101T090000Z\nRRULE:FREQ=DAILY").contains("DTSTART"));
        assert!(msg("FREQ=DAILY;DTSTART=20250101T090000Z").contains("DTSTART"));
        assert!(msg("FREQ=DAILY;INTERVAL=0").contains("INTERVAL"));
        assert!(msg("FREQ=DAILY;COUNT=2;UNTIL=20250101").contains("COUNT and UNTIL"));
        for garbage in [
            "garbage",
            "",
            "FREQ=FORTNIGHTLY",
            "FREQ=WEEKLY;BYDAY=XX",
            "FREQ=DAILY;UNTIL=soon",
        ] {
            msg(garbage);
        }
        assert!(Recurrence::parse("rrule:FREQ=WEEKLY;BYDAY=MO,WE", at).is_ok());
    }
}
