//! Network programming latency: EndpointSlices carry the time of the change that last touched
//! them (`endpoints.kubernetes.io/last-change-trigger-time`, set by the EndpointSlice
//! controller); once a sync that includes a new value is applied, now minus that time is how
//! long the change took to reach this node's datapath (kube-proxy's definition).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_model::{ChangeSet, ObjectKey, Snapshot};

pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Trigger times already accounted for, per EndpointSlice.
#[derive(Default)]
pub struct TriggerTimes {
    seen: Option<HashMap<ObjectKey, String>>,
}

impl TriggerTimes {
    /// New trigger times among the slices `changes` names (all of them when it says
    /// "everything"). None on the first call: objects that existed before the agent started
    /// say nothing about programming latency.
    pub fn new_triggers(&mut self, snapshot: &Snapshot, changes: &ChangeSet) -> Vec<SystemTime> {
        let first = self.seen.is_none();
        let seen = self.seen.get_or_insert_with(HashMap::new);
        if first || changes.everything {
            let mut fresh = Vec::new();
            let mut current = HashMap::with_capacity(seen.len());
            for key in snapshot.endpoint_slices.keys() {
                if let Some(value) = trigger_of(snapshot, key) {
                    if !first && seen.get(key) != Some(&value) {
                        fresh.extend(parse_rfc3339(&value));
                    }
                    current.insert(key.clone(), value);
                }
            }
            *seen = current;
            return fresh;
        }
        let mut fresh = Vec::new();
        for key in &changes.endpoint_slices {
            match trigger_of(snapshot, key) {
                Some(value) => {
                    if seen.get(key) != Some(&value) {
                        fresh.extend(parse_rfc3339(&value));
                    }
                    seen.insert(key.clone(), value);
                }
                None => {
                    seen.remove(key);
                }
            }
        }
        fresh
    }
}

fn trigger_of(snapshot: &Snapshot, key: &ObjectKey) -> Option<String> {
    snapshot
        .endpoint_slices
        .get(key)?
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)
        .cloned()
}

/// Latencies of `triggers` as of `now` (a trigger in the future, from clock skew, counts 0).
pub fn latencies(triggers: &[SystemTime], now: SystemTime) -> Vec<Duration> {
    triggers
        .iter()
        .map(|t| now.duration_since(*t).unwrap_or_default())
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` (what the API server writes) to a time.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_model::EndpointSlice;

    use super::*;

    #[test]
    fn parses_api_server_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2026-11-25T10:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_600_800))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(951_782_400_500))
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    fn snapshot(trigger: &str) -> Snapshot {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web-abc", "annotations": {TRIGGER_TIME_ANNOTATION: trigger}},
            "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap();
        let mut s = Snapshot::default();
        s.endpoint_slices
            .insert(ObjectKey::new("ns", "web-abc"), Arc::new(slice));
        s
    }

    #[test]
    fn only_changes_after_the_first_sync_count_and_each_once() {
        let mut t = TriggerTimes::default();
        let first = snapshot("2026-11-25T10:00:00Z");
        assert!(
            t.new_triggers(&first, &ChangeSet::everything()).is_empty(),
            "pre-existing"
        );
        let second = snapshot("2026-11-25T10:00:05Z");
        let changes = ChangeSet::between(&first, &second);
        let fresh = t.new_triggers(&second, &changes);
        assert_eq!(fresh, vec![UNIX_EPOCH + Duration::from_secs(1_795_600_805)]);
        assert!(t.new_triggers(&second, &changes).is_empty(), "counted once");
        let now = UNIX_EPOCH + Duration::from_secs(1_795_600_807);
        assert_eq!(latencies(&fresh, now), vec![Duration::from_secs(2)]);
    }
}
