//! Conversions between chrono (used for Patrol's time arithmetic) and the `Time` of
//! k8s-openapi (a jiff timestamp).

use chrono::{DateTime, Utc};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// A chrono instant as a Kubernetes `Time` (clamped to jiff's range, which spans years
/// -9999..=9999 — far beyond any token's life).
pub fn to_k8s(t: DateTime<Utc>) -> Time {
    let nanos = i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0);
    let ts = Timestamp::new(t.timestamp(), nanos).unwrap_or(if t.timestamp() < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    Time(ts)
}

/// A Kubernetes `Time` as a chrono instant.
pub fn from_k8s(t: &Time) -> DateTime<Utc> {
    let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
    DateTime::from_timestamp(t.0.as_second(), nanos).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = DateTime::parse_from_rfc3339("2026-11-28T04:09:09.123456789Z")
            .expect("time")
            .to_utc();
        assert_eq!(from_k8s(&to_k8s(t)), t);
        // On the wire Kubernetes keeps whole seconds.
        assert_eq!(
            serde_json::to_string(&to_k8s(t)).expect("json"),
            "\"2026-11-28T04:09:09Z\""
        );
    }
}
