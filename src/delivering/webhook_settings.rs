//! A webhook's own values of global settings (`webhooks.retry_schedule`, `.request_timeout`,
//! `.max_in_flight`) and its rate limit (`.max_requests_per_second`): NULL is the global value (no
//! limit for the rate). Checked by the same rules as the settings themselves. Pure.

use std::time::Duration;

use crate::delivering::push::envelope::{Payload, PayloadFormat};
use crate::delivering::retry::RetrySchedule;

/// `billhook.request_timeout`'s range, in milliseconds, for the setting and for a webhook's own.
pub const REQUEST_TIMEOUT_MS: (i32, i32) = (10, 600_000);
/// `billhook.max_in_flight_per_webhook`'s range, for the setting and for a webhook's own.
pub const MAX_IN_FLIGHT: (i32, i32) = (1, 512);
/// The highest rate limit a webhook may have: above it, the limit would be the senders' pace.
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;
/// The lowest: one push every 1,000 s. A claim's lease covers the wait behind a batch of pushes at
/// the webhook's rate, which must stay a time Postgres can write down.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
/// A webhook's options that take one of a few names, with those names (the first is the default).
const CHOICES: &[(&str, &[&str])] = &[
    ("ordering", &["none", "entity"]),
    ("payload_format", &PayloadFormat::NAMES),
    ("payload", &Payload::NAMES),
    // Which keys sign a push: the HMAC secret (v1), the ed25519 key (v1a), or both.
    ("signature", &["hmac", "ed25519", "both"]),
];

/// A webhook setting refused: which one, its value as given, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidSetting {
    pub setting: &'static str,
    pub value: String,
    pub reason: String,
}

/// What is allowed for `setting`, for the error's hint.
pub fn allowed(setting: &str) -> String {
    if let Some((_, names)) = CHOICES.iter().find(|(option, _)| *option == setting) {
        return format!("Use one of: {}.", names.join(", "));
    }
    match setting {
        "option" => {
            let options: Vec<&str> = CHOICES.iter().map(|(option, _)| *option).collect();
            format!("The webhook options with names to choose from: {}.", options.join(", "))
        }
        "retry_schedule" => "Use delays separated by commas with a unit (ms, s, m, h, d), such as '30s,5m,1h'; \
                             '' for no retries, NULL for billhook.retry_schedule."
            .to_string(),
        "max_in_flight" => format!(
            "Use a whole number from {} to {}, or NULL for billhook.max_in_flight_per_webhook.",
            MAX_IN_FLIGHT.0, MAX_IN_FLIGHT.1
        ),
        "max_requests_per_second" => {
            format!(
                "Use a number from {MIN_REQUESTS_PER_SECOND} (a push every {} s) to {MAX_REQUESTS_PER_SECOND}, or NULL \
                 for no limit.",
                1.0 / MIN_REQUESTS_PER_SECOND
            )
        }
        _ => format!(
            "Use an interval from {} ms to {} s, or NULL for billhook.request_timeout.",
            REQUEST_TIMEOUT_MS.0,
            REQUEST_TIMEOUT_MS.1 / 1000
        ),
    }
}

pub fn parse_retry_schedule(text: &str) -> Result<RetrySchedule, InvalidSetting> {
    RetrySchedule::parse(text).map_err(|reason| InvalidSetting {
        setting: "retry_schedule",
        value: format!("\"{text}\""),
        reason,
    })
}

/// A request timeout given in milliseconds (from an interval).
pub fn request_timeout(milliseconds: f64) -> Result<Duration, InvalidSetting> {
    let (min, max) = REQUEST_TIMEOUT_MS;
    if !(f64::from(min)..=f64::from(max)).contains(&milliseconds) {
        return Err(InvalidSetting {
            setting: "request_timeout",
            value: format!("{milliseconds} ms"),
            reason: format!("outside {min} ms .. {} s", max / 1000),
        });
    }
    Ok(Duration::from_secs_f64(milliseconds / 1000.0))
}

/// One of the names `option` allows (CHOICES).
pub fn choice(option: &str, value: &str) -> Result<(), InvalidSetting> {
    let (setting, names) = CHOICES.iter().find(|(name, _)| *name == option).ok_or_else(|| InvalidSetting {
        setting: "option",
        value: format!("\"{option}\""),
        reason: "no such webhook option".to_string(),
    })?;
    if !names.contains(&value) {
        return Err(InvalidSetting { setting, value: format!("\"{value}\""), reason: "no such choice".to_string() });
    }
    Ok(())
}

pub fn max_in_flight(requests: i32) -> Result<usize, InvalidSetting> {
    let (min, max) = MAX_IN_FLIGHT;
    if !(min..=max).contains(&requests) {
        return Err(InvalidSetting {
            setting: "max_in_flight",
            value: requests.to_string(),
            reason: format!("outside {min} .. {max}"),
        });
    }
    Ok(requests as usize)
}

pub fn max_requests_per_second(rate: f64) -> Result<f64, InvalidSetting> {
    if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&rate) {
        return Err(InvalidSetting {
            setting: "max_requests_per_second",
            value: rate.to_string(),
            reason: format!("outside {MIN_REQUESTS_PER_SECOND} .. {MAX_REQUESTS_PER_SECOND}"),
        });
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_timeouts_follow_the_settings_rules() {
        assert!(parse_retry_schedule("100ms,1s").is_ok());
        assert!(parse_retry_schedule("").is_ok(), "no retries");
        let refused = parse_retry_schedule("5 parsecs").unwrap_err();
        assert_eq!((refused.setting, refused.value.as_str()), ("retry_schedule", "\"5 parsecs\""));
        assert_eq!(request_timeout(1500.0).unwrap(), Duration::from_millis(1500));
        assert_eq!(request_timeout(10.0).unwrap(), Duration::from_millis(10));
        assert_eq!(request_timeout(5.0).unwrap_err().reason, "outside 10 ms .. 600 s");
        assert!(request_timeout(600_001.0).is_err());
        assert!(request_timeout(f64::NAN).is_err());
        assert_eq!(max_in_flight(1).unwrap(), 1);
        assert_eq!(max_in_flight(0).unwrap_err().reason, "outside 1 .. 512");
        assert!(max_in_flight(513).is_err());
        assert_eq!(max_requests_per_second(0.5).unwrap(), 0.5);
        assert_eq!(max_requests_per_second(10_000.0).unwrap(), 10_000.0);
        assert_eq!(max_requests_per_second(0.001).unwrap(), 0.001);
        for refused in [0.0, 1e-30, 0.000_999, -1.0, 10_000.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0] {
            assert_eq!(max_requests_per_second(refused).unwrap_err().setting, "max_requests_per_second");
        }
    }

    #[test]
    fn choices_are_one_of_their_names() {
        assert!(choice("ordering", "entity").is_ok() && choice("ordering", "none").is_ok());
        let refused = choice("ordering", "Entity").unwrap_err();
        assert_eq!((refused.setting, refused.value.as_str()), ("ordering", "\"Entity\""));
        assert_eq!(allowed("ordering"), "Use one of: none, entity.");
        assert_eq!(choice("colour", "red").unwrap_err().setting, "option");
    }
}
