//! The range of instants Chronicle accepts: 1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
//!
//! A fixed range, not one relative to now: imports of old history (2008–2011, say) stay
//! possible, and a replay next year judges an event as it was judged when it came. Every
//! instant that enters — an event's time, an `as_of`, a provider's timestamp — is checked
//! against it where it enters, and the store refuses an event outside it, so no arithmetic on
//! a stored time (a frequency cap's horizon, a wait, a campaign's re-entry) can overflow.

use chrono::{DateTime, Utc};

/// 1900-01-01T00:00:00Z, in seconds since the Unix epoch.
const EARLIEST_SECS: i64 = -2_208_988_800;
/// 9999-12-31T23:59:59Z, in seconds since the Unix epoch.
const LATEST_SECS: i64 = 253_402_300_799;

/// The earliest instant accepted.
pub fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(EARLIEST_SECS, 0).expect("in chrono's range")
}

/// The latest instant accepted.
pub fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(LATEST_SECS, 999_999_000).expect("in chrono's range")
}

/// Whether `t` is in the accepted range.
pub fn in_range(t: DateTime<Utc>) -> bool {
    (EARLIEST_SECS..=LATEST_SECS).contains(&t.timestamp())
}

/// An instant outside the accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be between 1900-01-01T00:00:00Z and 9999-12-31T23:59:59Z, got {at}")]
pub struct OutOfRange {
    pub what: String,
    pub at: String,
}

/// `t` if it is in range, else an error naming `what` it is.
pub fn check(what: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, OutOfRange> {
    if in_range(t) {
        Ok(t)
    } else {
        Err(OutOfRange { what: what.to_owned(), at: t.to_rfc3339() })
    }
}

/// Parse an RFC 3339 instant and check its range (for `as_of` and other instants a request
/// names).
pub fn parse(what: &str, text: &str) -> Result<DateTime<Utc>, String> {
    // chrono's general parser also reads years past four digits ("+10000-…", "-262143-…"), so
    // such an instant is told it is out of range rather than malformed.
    let t = DateTime::parse_from_rfc3339(text)
        .or_else(|_| text.parse::<DateTime<chrono::FixedOffset>>())
        .map_err(|_| format!("{what} is not an RFC 3339 instant: {text:?}"))?;
    check(what, t.with_timezone(&Utc)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_fixed_and_inclusive() {
        assert_eq!(earliest().to_rfc3339(), "1900-01-01T00:00:00+00:00");
        assert_eq!(latest().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(), "9999-12-31T23:59:59.999999");
        assert!(in_range(earliest()) && in_range(latest()));
        assert!(!in_range(earliest() - chrono::Duration::microseconds(1)));
        assert!(!in_range(latest() + chrono::Duration::seconds(1)));
        assert!(in_range("2008-03-01T00:00:00Z".parse().unwrap()), "old history imports");
        assert!(parse("as_of", "-262143-01-01T00:00:00Z").is_err());
        assert!(parse("event_time", "+10000-01-01T00:00:00Z").unwrap_err().contains("event_time must be between"));
        assert!(parse("as_of", "1899-12-31T23:59:59Z").is_err());
        assert!(parse("as_of", "1900-01-01T00:00:00Z").is_ok());
    }
}
