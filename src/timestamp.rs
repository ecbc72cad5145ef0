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
    /// Written by hand (every timestamp of every record a tool returns passes through here):
    /// the same text as formatting through `time`, which the tests check, at a tenth of the cost.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !(0..=MAX_MILLIS).contains(&self.0) {
            return self.fmt_through_time(f);
        }
        let (days, millis_of_day) = (self.0 / 86_400_000, self.0 % 86_400_000);
        let (year, month, day) = civil_from_days(days);
        let seconds_of_day = millis_of_day / 1000;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, seconds_of_day / 3600);
        put(14, 2, seconds_of_day / 60 % 60);
        put(17, 2, seconds_of_day % 60);
        put(20, 3, millis_of_day % 1000);
        f.write_str(std::str::from_utf8(&text).expect("ASCII digits"))
    }
}

impl Timestamp {
    fn fmt_through_time(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Year, month (1-12) and day (1-31) of the proleptic Gregorian calendar for a count of days
/// since 1970-01-01 (not negative): the civil-from-days algorithm, in 400-year eras.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March is 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
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
    fn the_hand_written_format_is_the_one_time_gives() {
        let through_time = |t: Timestamp| {
            struct Via(Timestamp);
            impl fmt::Display for Via {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    self.0.fmt_through_time(f)
                }
            }
            Via(t).to_string()
        };
        let day = 86_400_000;
        // Every day of 1970-1973 and 1999-2001 (leap years, a century leap year), the ends of
        // the range, and a spread of instants across it with every field varying.
        let edges = (0..4 * 366)
            .chain(10_592..11_689)
            .map(|d| d * day + 1)
            .chain([
                0,
                MAX_MILLIS,
                MAX_MILLIS - day,
                951_782_400_000,
                4_107_542_399_999,
            ]);
        let spread = (0..20_000i64).map(|i| i * (MAX_MILLIS / 20_000) + i * 7_919);
        for millis in edges.chain(spread) {
            let t = Timestamp::from_millis(millis).unwrap();
            assert_eq!(t.to_string(), through_time(t), "{millis}");
        }
    }

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
