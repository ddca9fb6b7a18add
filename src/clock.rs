//! Time as an injected dependency.
//!
//! Verification, authorization and expiry never read the system clock directly: they take a
//! [`Clock`], so tests can move time back and forward without touching the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;

    /// Time elapsed on a monotonic clock that setting the wall clock does not move (only
    /// differences between two readings mean anything). The default never moves.
    fn monotonic(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn monotonic(&self) -> std::time::Duration {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// A clock the test sets by hand (nanosecond resolution, shared between clones).
/// [`ManualClock::set`] sets the wall clock as an operator would (the monotonic clock does not
/// move); [`ManualClock::advance`] lets time pass (both move).
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicI64>,
    mono: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> Self {
        let nanos = i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        Self {
            nanos: Arc::new(AtomicI64::new(nanos)),
            mono: Arc::new(AtomicI64::new(0)),
        }
    }
    pub fn set(&self, at: OffsetDateTime) {
        let nanos = i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        self.nanos.store(nanos, Ordering::SeqCst);
    }
    pub fn advance(&self, by: time::Duration) {
        let add = i64::try_from(by.whole_nanoseconds()).unwrap_or(i64::MAX);
        self.nanos.fetch_add(add, Ordering::SeqCst);
        if add > 0 {
            self.mono.fetch_add(add, Ordering::SeqCst);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.nanos.load(Ordering::SeqCst)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
    fn monotonic(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            u64::try_from(self.mono.load(Ordering::SeqCst)).unwrap_or(0),
        )
    }
}

/// Shared handle used throughout the daemon.
pub type SharedClock = Arc<dyn Clock>;

const NONE_NS: i64 = i64::MIN;

fn unix_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn from_unix_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn opt_ns(ns: i64) -> Option<OffsetDateTime> {
    (ns != NONE_NS).then(|| from_unix_ns(ns))
}

fn mono_ns(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The one effective clock of the box: `max(system clock, signed floor, high-water mark −
/// tolerance)`. Every expiry (grants, tokens, sessions, lockouts) is judged, and every session
/// expiry is set, on this time.
///
/// - The **signed floor** is the newest signed `issued_at` the box accepted; only signed time
///   moves it, and only forward.
/// - The **high-water mark** is the newest system-clock time this clock has seen (never below
///   the floor). Every [`Clock::now`] raises it; the grants engine persists it, so it survives
///   restarts. While the system clock is more than the tolerance below the mark (set back, or
///   booted without a real-time clock), the mark keeps time by the monotonic clock, so the
///   effective time neither goes back nor stands still: sessions and lockouts still end.
///
/// Lock-free: a few atomics per call.
pub struct TrustedClock {
    raw: SharedClock,
    floor_ns: AtomicI64,
    high_water_ns: AtomicI64,
    /// The monotonic reading of the last call.
    mono_ns: AtomicI64,
    tolerance: time::Duration,
    /// The largest distance (ns) by which a reading was below the mark minus the tolerance
    /// since the last [`TrustedClock::take_rollback`]; 0 = none.
    rollback_ns: AtomicI64,
}

impl std::fmt::Debug for TrustedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedClock")
            .field("floor", &self.floor())
            .field("high_water", &self.high_water())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl TrustedClock {
    pub fn new(
        raw: SharedClock,
        floor: Option<OffsetDateTime>,
        high_water: Option<OffsetDateTime>,
        tolerance: time::Duration,
    ) -> TrustedClock {
        let mark = match (floor, high_water) {
            (Some(f), Some(h)) => Some(f.max(h)),
            (f, h) => f.or(h),
        };
        let mono = mono_ns(raw.monotonic());
        TrustedClock {
            raw,
            floor_ns: AtomicI64::new(floor.map_or(NONE_NS, unix_ns)),
            high_water_ns: AtomicI64::new(mark.map_or(NONE_NS, unix_ns)),
            mono_ns: AtomicI64::new(mono),
            tolerance,
            rollback_ns: AtomicI64::new(0),
        }
    }

    /// The system clock as it is (for the audit of a rollback, never for a decision).
    pub fn raw_now(&self) -> OffsetDateTime {
        self.raw.now()
    }

    /// The newest signed time accepted.
    pub fn floor(&self) -> Option<OffsetDateTime> {
        opt_ns(self.floor_ns.load(Ordering::SeqCst))
    }

    /// The high-water mark: the newest system-clock time seen (or kept by the monotonic clock).
    pub fn high_water(&self) -> Option<OffsetDateTime> {
        opt_ns(self.high_water_ns.load(Ordering::SeqCst))
    }

    pub fn tolerance(&self) -> time::Duration {
        self.tolerance
    }

    /// Moves the signed floor (and the mark with it) forward to `t`, never back.
    pub fn raise_floor(&self, t: OffsetDateTime) {
        self.floor_ns.fetch_max(unix_ns(t), Ordering::SeqCst);
        self.high_water_ns.fetch_max(unix_ns(t), Ordering::SeqCst);
    }

    /// Sets the high-water mark to `t` (never below the floor), also backwards: only for the
    /// correction of a forward jump by signed time (see the grants engine).
    pub fn reset_high_water(&self, t: OffsetDateTime) {
        let t = self.floor().map_or(t, |f| f.max(t));
        self.high_water_ns.store(unix_ns(t), Ordering::SeqCst);
    }

    /// max(system clock, floor): the time judged by signed time alone, without the high-water
    /// mark (key validity when verifying a new envelope, so that a forward jump of the local
    /// clock cannot retire every key before the correcting bundle arrives).
    pub fn signed_now(&self) -> OffsetDateTime {
        let raw = self.raw.now();
        match self.floor() {
            Some(f) if f > raw => f,
            _ => raw,
        }
    }

    /// How far below the high-water mark the clock went (beyond the tolerance) since the last
    /// call, if it did; resets the record.
    pub fn take_rollback(&self) -> Option<time::Duration> {
        let ns = self.rollback_ns.swap(0, Ordering::SeqCst);
        (ns > 0).then(|| time::Duration::nanoseconds(ns))
    }
}

impl Clock for TrustedClock {
    fn now(&self) -> OffsetDateTime {
        let raw = self.raw.now();
        let raw_ns = unix_ns(raw);
        let mono = mono_ns(self.raw.monotonic());
        let elapsed = mono.saturating_sub(self.mono_ns.fetch_max(mono, Ordering::SeqCst));
        let tol_ns = i64::try_from(self.tolerance.whole_nanoseconds()).unwrap_or(i64::MAX);
        let mut mark = self.high_water_ns.fetch_max(raw_ns, Ordering::SeqCst);
        let mut eff = raw;
        if let Some(f) = self.floor() {
            eff = eff.max(f);
        }
        if mark != NONE_NS {
            let least = mark.saturating_sub(tol_ns);
            if least > raw_ns {
                // Behind the mark: the mark keeps time by the monotonic clock.
                if elapsed > 0 {
                    mark = self
                        .high_water_ns
                        .fetch_add(elapsed, Ordering::SeqCst)
                        .saturating_add(elapsed);
                }
                self.rollback_ns
                    .fetch_max(least.saturating_sub(raw_ns), Ordering::SeqCst);
            }
            eff = eff.max(from_unix_ns(mark.saturating_sub(tol_ns)));
        }
        eff
    }

    fn monotonic(&self) -> std::time::Duration {
        self.raw.monotonic()
    }
}

/// Formats a time as RFC 3339 in UTC (the wire format for every timestamp).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
}

/// Milliseconds since the Unix epoch, the integer time stored in SQLite.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`unix_ms`].
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_ways() {
        let t0 = time::macros::datetime!(2026-11-26 12:00 UTC);
        let c = ManualClock::new(t0);
        c.advance(time::Duration::hours(1));
        assert_eq!(c.now(), time::macros::datetime!(2026-11-26 13:00 UTC));
        c.set(time::macros::datetime!(2020-01-01 0:00 UTC));
        assert_eq!(rfc3339(c.now()), "2020-01-01T00:00:00Z");
        assert_eq!(from_unix_ms(unix_ms(t0)), t0);
    }

    #[test]
    fn the_trusted_clock_never_goes_below_the_floor_or_the_mark_minus_the_tolerance() {
        let t0 = time::macros::datetime!(2026-11-26 12:00 UTC);
        let raw = ManualClock::new(t0);
        let tol = time::Duration::seconds(60);
        let c = TrustedClock::new(Arc::new(raw.clone()), None, None, tol);
        assert_eq!(c.now(), t0);
        assert_eq!(c.high_water(), Some(t0));
        // A small correction (within the tolerance) is followed as is, and is no rollback.
        raw.set(t0 - time::Duration::seconds(30));
        assert_eq!(c.now(), t0 - time::Duration::seconds(30));
        assert_eq!(c.take_rollback(), None);
        // One hour back: the effective time stays at the mark minus the tolerance.
        raw.set(t0 - time::Duration::hours(1));
        assert_eq!(c.now(), t0 - tol);
        assert_eq!(c.signed_now(), t0 - time::Duration::hours(1));
        assert_eq!(
            c.take_rollback(),
            Some(time::Duration::hours(1) - tol),
            "the rollback is recorded"
        );
        assert_eq!(c.take_rollback(), None, "and taken once");
        // While behind, time still passes (by the monotonic clock).
        raw.advance(time::Duration::minutes(10));
        assert_eq!(c.now(), t0 + time::Duration::minutes(10) - tol);
        // A signed floor above everything wins.
        c.raise_floor(t0 + time::Duration::days(1));
        c.raise_floor(t0);
        assert_eq!(c.now(), t0 + time::Duration::days(1));
        assert_eq!(c.signed_now(), t0 + time::Duration::days(1));
        // Forward time moves the mark; a reset can move it back, never below the floor.
        raw.set(t0 + time::Duration::days(400));
        assert_eq!(c.now(), t0 + time::Duration::days(400));
        c.reset_high_water(t0);
        assert_eq!(c.high_water(), Some(t0 + time::Duration::days(1)));
        raw.set(t0 + time::Duration::days(1) + time::Duration::hours(1));
        assert_eq!(
            c.now(),
            t0 + time::Duration::days(1) + time::Duration::hours(1)
        );
    }
}
