//! Timestamps: milliseconds since the Unix epoch inside, RFC 3339 UTC with milliseconds outside
//! (`2026-03-15T14:30:00.000Z`), as SPEC §3 asks.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Latest accepted timestamp (year 9999), so arithmetic and formatting cannot overflow.
const MAX_MILLIS: i64 = 253_402_300_799_999;

impl Timestamp {
    pub fn now() -> Timestamp {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(millis)
    }

    pub fn from_millis(millis: i64) -> Option<Timestamp> {
        (0..=MAX_MILLIS)
            .contains(&millis)
            .then_some(Timestamp(millis))
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// `self + seconds`, or None past year 9999.
    pub fn plus_seconds(self, seconds: u64) -> Option<Timestamp> {
        let delta = i64::try_from(seconds).ok()?.checked_mul(1000)?;
        Timestamp::from_millis(self.0.checked_add(delta)?)
    }

    pub fn parse(text: &str) -> Result<Timestamp, String> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
            format!(
                "invalid timestamp {:?}: expected RFC 3339 such as 2026-03-15T14:30:00.000Z",
                crate::secret::truncate_for_message(text)
            )
        })?;
        let millis = parsed.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(millis)
            .ok()
            .and_then(Timestamp::from_millis)
            .ok_or_else(|| format!("timestamp {text:?} is out of range (1970 to 9999)"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text (RFC 3339) in human-readable formats such as JSON; milliseconds in the store's compact
/// binary encoding.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Timestamp::parse(&text).map_err(serde::de::Error::custom)
        } else {
            let millis = i64::deserialize(d)?;
            Timestamp::from_millis(millis)
                .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        let t = Timestamp::parse("2026-03-15T14:30:00.123Z").unwrap();
        assert_eq!(t.to_string(), "2026-03-15T14:30:00.123Z");
        let offset = Timestamp::parse("2026-03-15T16:30:00+02:00").unwrap();
        assert_eq!(offset.to_string(), "2026-03-15T14:30:00.000Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("1969-12-31T23:59:59Z").is_err());
        assert!(Timestamp::now().plus_seconds(u64::MAX).is_none());
    }
}
