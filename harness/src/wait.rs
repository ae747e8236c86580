//! Polling with a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] asks.
pub const POLL: Duration = Duration::from_millis(100);

/// What a condition answers: done (with a value), or not yet (with why, for the message
/// should the deadline pass). `true`, `Some(value)` and `Ok(value)` are done — mind that
/// `Ok(false)` is done too: a check that can fail and say no returns `bool` after its own
/// error handling.
pub trait Outcome {
    /// What the wait yields once the condition holds.
    type Value;
    /// `Ok` once the condition holds, `Err(why not)` before.
    fn into_outcome(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_outcome(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    type Value = T;
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Asks `condition` every [`POLL`] until it holds, and returns its value; fails naming
/// `what` (and the last reason it gave) once `timeout` has passed. A condition that holds
/// at the deadline's last check still counts. `condition` may be an async closure that
/// borrows what it checks.
pub async fn wait_until<F, O>(
    timeout: Duration,
    what: &str,
    condition: F,
) -> Result<O::Value, String>
where
    F: AsyncFnMut() -> O,
    O: Outcome,
{
    wait_until_every(POLL, timeout, what, condition).await
}

/// [`wait_until`], asking every `every` (a check that costs the process being measured
/// asks less often).
pub async fn wait_until_every<F, O>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Result<O::Value, String>
where
    F: AsyncFnMut() -> O,
    O: Outcome,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match condition().await.into_outcome() {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(if last.is_empty() {
                format!("{what}: not within {timeout:?}")
            } else {
                format!("{what}: not within {timeout:?}; last: {last}")
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_condition_and_reports_the_last_reason() {
        let mut asked = 0;
        let value = wait_until(Duration::from_secs(5), "the third ask", || {
            asked += 1;
            let n = asked;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(value, Ok(3));
        let failed = wait_until(Duration::from_secs(1), "never", || async {
            Err::<(), _>("still 0 rows")
        })
        .await;
        assert_eq!(
            failed,
            Err("never: not within 1s; last: still 0 rows".to_string())
        );
        assert_eq!(
            wait_until(Duration::from_secs(1), "a flag", || async { false }).await,
            Err("a flag: not within 1s".to_string())
        );
    }
}
