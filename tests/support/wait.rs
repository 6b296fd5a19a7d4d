//! Bounded waits. A test that waits for something says what, and how long it may take: a
//! hang fails the test with the last thing it saw instead of blocking the suite.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::{Duration, Instant};

/// What one look at a condition answers: done (with a value), or not yet (with what was seen,
/// for the message on timeout).
pub trait Poll {
    type Out;
    type Seen: Debug;
    fn check(self) -> Result<Self::Out, Option<Self::Seen>>;
}

impl Poll for bool {
    type Out = ();
    type Seen = ();
    fn check(self) -> Result<(), Option<()>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Poll for Option<T> {
    type Out = T;
    type Seen = ();
    fn check(self) -> Result<T, Option<()>> {
        self.ok_or(None)
    }
}

/// `Err(seen)`: not yet, and `seen` is what the message on timeout shows.
impl<T, E: Debug> Poll for Result<T, E> {
    type Out = T;
    type Seen = E;
    fn check(self) -> Result<T, Option<E>> {
        self.map_err(Some)
    }
}

/// Pauses between looks: short at first, then at most 100 ms.
struct Pacing {
    start: Instant,
    timeout: Duration,
    pause: Duration,
}

impl Pacing {
    fn new(timeout: Duration) -> Pacing {
        Pacing {
            start: Instant::now(),
            timeout,
            pause: Duration::from_millis(10),
        }
    }

    /// The next pause, or `None` once the time is up.
    fn next(&mut self) -> Option<Duration> {
        let left = self.timeout.checked_sub(self.start.elapsed())?;
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        Some(pause)
    }
}

/// Looks at `f` until it is done or `timeout` has passed; then `Err` with the last thing seen.
pub fn until<P: Poll>(
    timeout: Duration,
    mut f: impl FnMut() -> P,
) -> Result<P::Out, Option<P::Seen>> {
    let mut pacing = Pacing::new(timeout);
    let mut last = None;
    loop {
        match f().check() {
            Ok(v) => return Ok(v),
            Err(seen) => last = seen.or(last),
        }
        match pacing.next() {
            Some(pause) => std::thread::sleep(pause),
            None => return Err(last),
        }
    }
}

/// [`until`] for conditions that have to be awaited.
pub async fn until_async<P: Poll, F: Future<Output = P>>(
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Result<P::Out, Option<P::Seen>> {
    let mut pacing = Pacing::new(timeout);
    let mut last = None;
    loop {
        match f().await.check() {
            Ok(v) => return Ok(v),
            Err(seen) => last = seen.or(last),
        }
        match pacing.next() {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return Err(last),
        }
    }
}

fn timed_out(what: &dyn Display, timeout: Duration, last: Option<&dyn Debug>) -> ! {
    match last {
        Some(seen) => panic!("{what}: not within {timeout:?}; last seen: {seen:#?}"),
        None => panic!("{what}: not within {timeout:?}"),
    }
}

/// Waits (bounded) until `f` is done and returns its value; panics with `what` and the last
/// thing seen when `timeout` passes first. `what` is displayed only then, so it may read a
/// log (see `Up::with_log`).
pub fn eventually<P: Poll>(timeout: Duration, what: impl Display, f: impl FnMut() -> P) -> P::Out {
    until(timeout, f)
        .unwrap_or_else(|last| timed_out(&what, timeout, last.as_ref().map(|s| s as _)))
}

/// [`eventually`] for conditions that have to be awaited.
pub async fn eventually_async<P: Poll, F: Future<Output = P>>(
    timeout: Duration,
    what: impl Display,
    f: impl FnMut() -> F,
) -> P::Out {
    match until_async(timeout, f).await {
        Ok(v) => v,
        Err(last) => timed_out(&what, timeout, last.as_ref().map(|s| s as _)),
    }
}

/// Displays as `what`, followed by whatever `more` returns at that moment (a log, read only
/// when a wait fails).
pub struct With<'a, F: Fn() -> String> {
    pub what: &'a str,
    pub more: F,
}

impl<F: Fn() -> String> Display for With<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.what, (self.more)())
    }
}
