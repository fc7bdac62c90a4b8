//! Refusals of requests without a valid bearer token, audited without letting anyone who can
//! reach the port fill the disk: per source (peer IP) and interval, the first refusal is recorded
//! at once, the rest are counted into one summary record written when the interval is over (on
//! the next refusal, by the periodic flush, or at shutdown).
//!
//! The map of sources is bounded: when it is full, new sources share one overflow window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The most sources tracked one by one.
pub const MAX_SOURCES: usize = 4096;

/// The refusals of one source counted over one interval, after the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `None`: the overflow window (sources beyond `MAX_SOURCES`, or no peer address).
    pub source: Option<IpAddr>,
    pub count: u64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The reason of the last refusal counted.
    pub last_reason: String,
}

struct Window {
    started: Instant,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    counted: u64,
    last_reason: String,
}

impl Window {
    fn summary(self, source: Option<IpAddr>) -> Option<Summary> {
        (self.counted > 0).then_some(Summary {
            source,
            count: self.counted,
            from: self.from,
            to: self.to,
            last_reason: self.last_reason,
        })
    }
}

struct Inner {
    windows: HashMap<Option<IpAddr>, Window>,
    last_sweep: Instant,
}

pub struct Refusals {
    interval: Duration,
    max_sources: usize,
    inner: Mutex<Inner>,
}

/// What to write for one refusal.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Record this refusal itself (the first of its source's interval).
    pub record: bool,
    /// Summaries of intervals that are over.
    pub summaries: Vec<Summary>,
}

impl Refusals {
    pub fn new(interval: Duration) -> Self {
        Self::with_max_sources(interval, MAX_SOURCES)
    }

    pub fn with_max_sources(interval: Duration, max_sources: usize) -> Self {
        Self {
            interval,
            max_sources,
            inner: Mutex::new(Inner {
                windows: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes one refusal from `source` at `now`.
    pub fn note(&self, source: Option<IpAddr>, now: Instant, reason: &str) -> Verdict {
        let mut inner = self.lock();
        let mut verdict = Verdict::default();
        if now.saturating_duration_since(inner.last_sweep) >= Duration::from_secs(1)
            || inner.windows.len() >= self.max_sources
        {
            verdict.summaries = sweep(&mut inner.windows, now, self.interval, false);
            inner.last_sweep = now;
        }
        let key = if source.is_some()
            && (inner.windows.contains_key(&source) || inner.windows.len() < self.max_sources)
        {
            source
        } else {
            None
        };
        let wall = Utc::now();
        match inner.windows.get_mut(&key) {
            Some(w) if now.saturating_duration_since(w.started) < self.interval => {
                w.counted += 1;
                w.to = wall;
                w.last_reason = reason.to_owned();
            }
            _ => {
                if let Some(over) = inner.windows.remove(&key)
                    && let Some(s) = over.summary(key)
                {
                    verdict.summaries.push(s);
                }
                inner.windows.insert(
                    key,
                    Window {
                        started: now,
                        from: wall,
                        to: wall,
                        counted: 0,
                        last_reason: String::new(),
                    },
                );
                verdict.record = true;
            }
        }
        verdict
    }

    /// Summaries of the intervals that are over at `now` (all open ones with `all`, at shutdown).
    pub fn flush(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut inner = self.lock();
        inner.last_sweep = now;
        sweep(&mut inner.windows, now, self.interval, all)
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.lock().windows.len()
    }
}

fn sweep(
    windows: &mut HashMap<Option<IpAddr>, Window>,
    now: Instant,
    interval: Duration,
    all: bool,
) -> Vec<Summary> {
    let over: Vec<Option<IpAddr>> = windows
        .iter()
        .filter(|(_, w)| all || now.saturating_duration_since(w.started) >= interval)
        .map(|(k, _)| *k)
        .collect();
    over.into_iter()
        .filter_map(|k| windows.remove(&k).and_then(|w| w.summary(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn one_record_then_one_count_per_source_and_interval() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.note(ip("192.0.2.1"), t0, "no bearer token").record);
        for i in 1..1000 {
            let v = r.note(
                ip("192.0.2.1"),
                t0 + Duration::from_millis(i),
                "no bearer token",
            );
            assert!(!v.record && v.summaries.is_empty());
        }
        // Another source is recorded on its own.
        assert!(
            r.note(ip("2001:db8::1"), t0, "the token is malformed")
                .record
        );
        assert!(r.flush(t0 + Duration::from_secs(59), false).is_empty());
        // The interval is over: the next refusal writes the count and is recorded itself.
        let v = r.note(
            ip("192.0.2.1"),
            t0 + Duration::from_secs(61),
            "the token has expired",
        );
        assert!(v.record);
        let s: Vec<&Summary> = v
            .summaries
            .iter()
            .filter(|s| s.source == ip("192.0.2.1"))
            .collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 999);
        assert_eq!(s[0].last_reason, "no bearer token");
        // Shutdown writes what is open; a window with nothing counted writes nothing.
        assert!(r.flush(t0 + Duration::from_secs(62), true).is_empty());
    }

    #[test]
    fn the_map_is_bounded_and_the_overflow_shares_one_window() {
        let r = Refusals::with_max_sources(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let mut recorded = 0;
        for i in 0..1000u32 {
            let source = Some(IpAddr::from(i.to_be_bytes()));
            recorded += usize::from(r.note(source, t0, "no bearer token").record);
            assert!(r.sources() <= 4, "{}", r.sources());
        }
        // Three sources on their own, one overflow window for the other 997.
        assert_eq!(recorded, 4);
        let all = r.flush(t0, true);
        let overflow = all.iter().find(|s| s.source.is_none()).expect("overflow");
        assert_eq!(overflow.count, 996);
        // No peer address at all counts into the overflow window too.
        assert!(r.note(None, t0, "no bearer token").record);
        assert!(!r.note(None, t0, "no bearer token").record);
    }
}
