//! Units as the service reads them: durations given as seconds or in human form, and
//! probabilities. Plain functions over text, shared by the flags, the config file and the
//! policy specs.

use std::time::Duration;

/// The longest duration any setting takes: a year. Past it, deadlines and timers
/// overflow the clock, or wait for ever.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a duration given as seconds (`0.5`) or in human form (`30s`, `7d`), of at most
/// `MAX_DURATION`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a non-negative number of seconds"))?,
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is neither seconds nor a duration like 30s or 7d: {e}"))?,
    };
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the longest duration taken, 366d"
        ));
    }
    Ok(d)
}

/// Parses a duration as `parse_duration` does, refusing zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be more than zero")),
        d => Ok(d),
    }
}

/// Parses a probability in `[0, 1]`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

/// The message a panic was raised with.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Serializes a float to six significant digits: a report says `1.80019`, not
/// `1.8001909999999999`, and keeps a microsecond's resolution in a millisecond figure.
pub(crate) fn round_f64<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(significant(*x, 6))
}

/// `x` to `digits` significant digits.
pub(crate) fn significant(x: f64, digits: usize) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{x:.*e}", digits.saturating_sub(1))
        .parse()
        .unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 24 * 3600)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
        assert!(parse_duration("367d").is_err());
        assert!(parse_duration("31622401").is_err());
        assert!(parse_duration("1e19").is_err());
    }

    #[test]
    fn probabilities_stay_within_zero_and_one() {
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("x").is_err());
    }

    #[test]
    fn panic_text_reads_both_string_payloads() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_text(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_text(p.as_ref()), "static");
    }
}
