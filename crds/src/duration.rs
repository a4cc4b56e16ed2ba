//! Durations as people write them in manifests: Go-style (`90m`, `36h`, `1h30m`) plus days (`90d`).
//!
//! The API keeps the text exactly as written (so GitOps tools see no drift) and parses it on
//! use. One parser serves the webhook, the operator and the tests; the CRD schema carries a
//! CEL rule with the same grammar so `kubectl apply` rejects a malformed value up front.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Units a duration may use, smallest first, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// What every duration error message ends with, so a person knows what to write instead.
pub const ACCEPTED_FORMS: &str =
    "use a number with a unit, e.g. 90d, 36h, 90m, 1h30m (units: d, h, m, s, ms, us, ns)";

/// The CEL regular expression the CRD uses for the same grammar (no fractions: Kubernetes
/// users expect `1h30m`, and integers keep `parse` and the schema in exact agreement).
pub const CEL_PATTERN: &str = "^([0-9]{1,9}(ns|us|µs|ms|s|m|h|d))+$";

/// Longest duration text accepted; bounds CEL cost and keeps errors readable.
pub const MAX_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; {ACCEPTED_FORMS}")]
    Empty,
    #[error("duration {0:?} is longer than {MAX_LEN} characters; {ACCEPTED_FORMS}")]
    TooLong(String),
    #[error("duration {text:?} has no unit after {number}; {ACCEPTED_FORMS}")]
    MissingUnit { text: String, number: String },
    #[error("duration {text:?} has unknown unit {unit:?}; {ACCEPTED_FORMS}")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {text:?} must start with a number at {rest:?}; {ACCEPTED_FORMS}")]
    MissingNumber { text: String, rest: String },
    #[error("duration {0:?} is too large: at most 9 digits per number")]
    Overflow(String),
}

/// Parses `90d`, `36h`, `1h30m`, `500ms` into a [`std::time::Duration`].
pub fn parse(text: &str) -> Result<std::time::Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.chars().count() > MAX_LEN {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::MissingNumber {
                text: text.to_owned(),
                rest: rest.to_owned(),
            });
        }
        let (number, after) = rest.split_at(digits);
        if number.len() > 9 {
            return Err(DurationError::Overflow(text.to_owned()));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                text: text.to_owned(),
                number: number.to_owned(),
            });
        }
        let Some(&(_, nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        };
        let value: u128 = number
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_owned()))?;
        total = value
            .checked_mul(nanos)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_owned()))?;
    let nanos = u32::try_from(total % 1_000_000_000)
        .map_err(|_| DurationError::Overflow(text.to_owned()))?;
    Ok(std::time::Duration::new(secs, nanos))
}

/// Formats a duration the way [`parse`] reads it, largest units first (`1d2h`, `90m`, `0s`).
pub fn format(duration: std::time::Duration) -> String {
    let mut nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for &(name, size) in UNITS.iter().rev().filter(|(name, _)| *name != "µs") {
        if nanos >= size {
            out.push_str(&format!("{}{name}", nanos / size));
            nanos %= size;
        }
    }
    out
}

/// A duration field of the API: the text as written, parsed on use.
///
/// Deserialization accepts any string so one malformed object never breaks a watch; validation
/// (schema CEL, admission webhook, reconciler) reports it with [`Duration::parse`]'s message.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl Duration {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn from_std(duration: std::time::Duration) -> Self {
        Self(format(duration))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        parse(&self.0)
    }

    /// The value as a chrono duration, for arithmetic with timestamps.
    pub fn to_chrono(&self) -> Result<chrono::Duration, DurationError> {
        let std = self.parse()?;
        chrono::Duration::from_std(std).map_err(|_| DurationError::Overflow(self.0.clone()))
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_LEN,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{CEL_PATTERN}')"),
                "message": format!("must be a duration: {ACCEPTED_FORMS}"),
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_go_style_and_days() {
        let table = [
            ("90d", Std::from_secs(90 * 86_400)),
            ("36h", Std::from_secs(36 * 3_600)),
            ("90m", Std::from_secs(90 * 60)),
            ("1h30m", Std::from_secs(5_400)),
            ("45s", Std::from_secs(45)),
            ("1500ms", Std::from_millis(1_500)),
            ("7us", Std::from_micros(7)),
            ("7µs", Std::from_micros(7)),
            ("3ns", Std::from_nanos(3)),
            ("0s", Std::ZERO),
            ("1d12h", Std::from_secs(36 * 3_600)),
        ];
        for (text, want) in table {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_with_a_message_that_says_what_is_accepted() {
        let table = [
            ("", "empty"),
            ("90", "no unit after 90"),
            ("h", "must start with a number"),
            ("1.5h", "unknown unit \".\""),
            ("10y", "unknown unit \"y\""),
            ("-5m", "must start with a number"),
            (" 5m", "must start with a number"),
            ("5 m", "unknown unit \" m\""),
            ("1h30", "no unit after 30"),
            ("999999999999999999999999d", "too large"),
            ("111111111111111111111111111111111s", "longer than 32"),
        ];
        for (text, want) in table {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            if !err.contains("too large") {
                assert!(err.contains("e.g. 90d"), "{text:?}: {err}");
            }
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [0u64, 1, 59, 60, 3_600, 5_400, 86_400, 90 * 86_400 + 61] {
            let d = Std::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d), "{secs}");
        }
        assert_eq!(format(Std::from_secs(5_400)), "1h30m");
        assert_eq!(format(Std::from_millis(1_500)), "1s500ms");
    }

    #[test]
    fn keeps_text_as_written() {
        let d: Duration = serde_json::from_str("\"1440m\"").expect("json");
        assert_eq!(serde_json::to_string(&d).expect("json"), "\"1440m\"");
        assert_eq!(d.parse(), Ok(Std::from_secs(86_400)));
        // Malformed text still deserializes; only validation complains.
        let bad: Duration = serde_json::from_str("\"soon\"").expect("json");
        assert!(bad.parse().is_err());
    }

    #[test]
    fn cel_pattern_agrees_with_parser() {
        // The apiserver evaluates CEL_PATTERN (RE2); the regex crate speaks the same dialect
        // for this pattern, so what the schema admits is exactly what `parse` reads.
        let re = regex::Regex::new(CEL_PATTERN).expect("pattern compiles");
        let corpus = [
            "90d",
            "36h",
            "1h30m",
            "0s",
            "7µs",
            "500ms",
            "1d1h1m1s1ms1us1ns",
            "123456789s",
            "1234567890s",
            "",
            "h",
            "1.5h",
            "10y",
            "-5m",
            " 5m",
            "5m ",
            "1h30",
            "1H",
            "1e3s",
        ];
        for text in corpus {
            assert_eq!(re.is_match(text), parse(text).is_ok(), "{text:?}");
        }
    }
}
