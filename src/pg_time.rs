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

/// A Postgres timestamp (UTC) as billhook.json_time writes it, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, for
/// the years 1 to 9999; None outside them (and for infinities), where to_char writes otherwise.
pub fn iso_utc(postgres_micros: i64) -> Option<String> {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    const DAYS_1970_TO_2000: i64 = 10_957;
    let days = postgres_micros.div_euclid(MICROS_PER_DAY) + DAYS_1970_TO_2000;
    let of_day = postgres_micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return None;
    }
    let (seconds, micros) = (of_day / 1_000_000, of_day % 1_000_000);
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    Some(format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z"))
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_json_time_writes_them() {
        const DAY: i64 = 86_400_000_000;
        assert_eq!(iso_utc(0).as_deref(), Some("2000-01-01T00:00:00.000000Z"));
        assert_eq!(iso_utc(-1).as_deref(), Some("1999-12-31T23:59:59.999999Z"));
        assert_eq!(iso_utc(59 * DAY + 3_723_000_042).as_deref(), Some("2000-02-29T01:02:03.000042Z"));
        assert_eq!(iso_utc(60 * DAY).as_deref(), Some("2000-03-01T00:00:00.000000Z"));
        // The range the tables' checks allow, and what is just outside it.
        let year_1 = -63_082_281_600_000_000;
        let end_of_9999 = 252_455_615_999_999_999;
        assert_eq!(iso_utc(year_1).as_deref(), Some("0001-01-01T00:00:00.000000Z"));
        assert_eq!(iso_utc(end_of_9999).as_deref(), Some("9999-12-31T23:59:59.999999Z"));
        assert_eq!(iso_utc(year_1 - 1), None);
        assert_eq!(iso_utc(end_of_9999 + 1), None);
        assert_eq!(iso_utc(i64::MIN), None);
        assert_eq!(iso_utc(i64::MAX), None);
    }

    #[test]
    fn the_postgres_epoch_is_2000_01_01() {
        assert_eq!(POSTGRES_EPOCH_UNIX_SECONDS, 946_684_800);
        assert_eq!(unix_seconds(1_500_000), 946_684_801.5);
    }
}
