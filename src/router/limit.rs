//! Caps on requests in flight, overall and per bot: past a cap the router
//! answers 503 at once instead of queueing, and Telegram retries later.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// A count of requests in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
}

/// One request's place in an [`InFlight`] count, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<InFlight>);

impl InFlight {
    /// Takes a slot if fewer than `max` are taken.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max).then_some(count + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Slots taken now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_past_the_cap_and_come_back_on_drop() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.try_enter(2).unwrap();
        let second = in_flight.try_enter(2).unwrap();
        assert!(in_flight.try_enter(2).is_none());
        assert_eq!(in_flight.current(), 2);
        drop(first);
        let third = in_flight.try_enter(2).unwrap();
        assert_eq!(in_flight.current(), 2);
        drop((second, third));
        assert_eq!(in_flight.current(), 0);
        assert!(in_flight.try_enter(0).is_none());
    }

    #[test]
    fn concurrent_takers_never_exceed_the_cap() {
        let in_flight = Arc::new(InFlight::default());
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..2_000 {
                        if let Some(slot) = in_flight.try_enter(3) {
                            peak.fetch_max(in_flight.current(), Ordering::AcqRel);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 3);
        assert!(peak.load(Ordering::Acquire) >= 1);
        assert_eq!(in_flight.current(), 0);
    }
}
