//! Postgres timestamps (microseconds since 2000-01-01) and Unix time.

use std::time::SystemTime;

use pgrx::pg_sys;

const POSTGRES_EPOCH_UNIX_SECONDS: i64 =
    (pg_sys::POSTGRES_EPOCH_JDATE - pg_sys::UNIX_EPOCH_JDATE) as i64 * pg_sys::SECS_PER_DAY as i64;

/// A Postgres timestamp in seconds since 1970-01-01.
pub fn unix_seconds(postgres_micros: i64) -> f64 {
    postgres_micros as f64 / 1e6 + POSTGRES_EPOCH_UNIX_SECONDS as f64
}

pub fn timestamptz(at: SystemTime) -> pgrx::datum::TimestampWithTimeZone {
    let micros = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
        - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000;
    pgrx::datum::TimestampWithTimeZone::try_from(micros).expect("a time after 2000 is a valid timestamptz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_epoch_is_2000_01_01() {
        assert_eq!(POSTGRES_EPOCH_UNIX_SECONDS, 946_684_800);
        assert_eq!(unix_seconds(1_500_000), 946_684_801.5);
    }
}
