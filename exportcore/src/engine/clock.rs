//! The engine's notion of "now": a [`Clock`] injected through the builder, so idempotency
//! windows, retention and run records can be tested without sleeping.

use crate::model::Timestamp;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A source of the current time. Run timeouts and backoff still wait on tokio's timer (pause
/// it with `tokio::time::pause` in tests); everything the engine records or compares uses this.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to: for tests.
///
/// ```
/// use exportcore::engine::{Clock, ManualClock};
/// use exportcore::Timestamp;
/// let clock = ManualClock::new(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
/// clock.advance(std::time::Duration::from_secs(90));
/// assert_eq!(clock.now().to_string(), "2025-01-01T00:01:30Z");
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }
    /// Moves the clock forward (whole seconds).
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = plus(*t, by);
    }
    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `t + d` (sub-second precision: leases are renewed in fractions of a second).
pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.plus(d)
}
