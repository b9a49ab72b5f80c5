//! Exponential backoff between restart attempts: `initial_delay × backoff_base^(n-1)`, capped, with jitter.

use std::time::Duration;

use crate::config::RestartPolicy;

/// The delay schedule of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    base: f64,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// The schedule of a validated restart policy.
    pub fn new(policy: &RestartPolicy) -> Self {
        Self {
            initial: policy.initial_delay,
            base: policy.backoff_base,
            max: policy.max_delay,
            jitter: policy.jitter,
        }
    }

    /// The delay before attempt `attempt` (1-based), without jitter: 2s, 4s, 8s with the defaults.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let seconds = self.initial.as_secs_f64() * self.base.powi(exponent);
        if !seconds.is_finite() || seconds >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(seconds)
    }

    /// The delay before attempt `attempt`, spread by up to ±jitter of itself using `unit`, a number in
    /// `0.0..1.0` (random in production, fixed in tests), and still capped.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(factor.max(0.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(initial: u64, base: f64, max: u64, jitter: f64) -> RestartPolicy {
        RestartPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_secs(initial),
            backoff_base: base,
            max_delay: Duration::from_secs(max),
            jitter,
            reset_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn default_schedule_doubles_from_two_seconds() {
        let backoff = Backoff::new(&policy(2, 2.0, 300, 0.0));
        let delays: Vec<u64> = (1..=4).map(|n| backoff.delay(n, 0.7).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16]);
    }

    #[test]
    fn delays_are_capped_at_max_delay() {
        let backoff = Backoff::new(&policy(2, 2.0, 10, 0.0));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(8));
        assert_eq!(backoff.delay(4, 0.0), Duration::from_secs(10));
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn base_one_is_a_constant_delay_and_zero_initial_is_immediate() {
        assert_eq!(
            Backoff::new(&policy(5, 1.0, 60, 0.0)).delay(9, 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            Backoff::new(&policy(0, 2.0, 60, 0.0)).delay(3, 0.0),
            Duration::ZERO
        );
    }

    proptest! {
        #[test]
        fn jitter_stays_within_its_fraction_and_the_cap(
            attempt in 1u32..20, jitter in 0.0f64..=1.0, unit in 0.0f64..1.0
        ) {
            let backoff = Backoff::new(&policy(2, 2.0, 300, jitter));
            let base = backoff.base_delay(attempt).as_secs_f64();
            let delay = backoff.delay(attempt, unit).as_secs_f64();
            prop_assert!(delay <= 300.0 + 1e-9);
            prop_assert!(delay >= base * (1.0 - jitter) - 1e-9);
            prop_assert!(delay <= base * (1.0 + jitter) + 1e-9);
        }
    }
}
