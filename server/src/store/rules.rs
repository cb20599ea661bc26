//! The ingest rules every store applies, whatever its SQL: which rows an insert id makes
//! duplicates, what a refused row leaves behind, how a request's events move their sessions,
//! and how `identify` and `increment` change a profile (SPEC §5, §6, §6b).
//!
//! A store writes a request in these steps, each a few statements of its own SQL:
//! 1. [`Plan::new`], then claim [`Plan::keys`] (in that sorted order) and report which were
//!    fresh with [`Plan::claimed`];
//! 2. insert [`Plan::events`];
//! 3. read (and, on a shared database, lock) the profiles of [`Plan::profile_ids`], let
//!    [`Plan::apply_profiles`] change them, write back what it returns;
//! 4. upsert [`Plan::groups`] and [`Plan::assignments`];
//! 5. release [`Plan::refused_keys`];
//! 6. upsert [`Plan::sessions`], placing each session's one `session_start` at
//!    [`session_start_time`] of its earliest event, and keeping the [`SessionProfile::first`]
//!    of the stored and the new profile ids;
//! 7. answer with [`Plan::outcomes`].
//!
//! Every list a store writes comes sorted by its conflict key, so that overlapping requests on
//! several nodes take their row locks in the same order and cannot deadlock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use backfill_protocol::limits::SESSION_START_LEAD_MS;
use backfill_protocol::number::{Decimal, add_exact};
use backfill_protocol::properties::RawMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::{NewEvent, PreparedRow, RowAction, RowOutcome};

/// The time of a session's `session_start`: 100 ms before its earliest event (SPEC §6).
pub fn session_start_time(started_at: i64) -> i64 {
    started_at - SESSION_START_LEAD_MS
}

/// A session's profile id with the event time of the event it came from. Of two, the one whose
/// event is earlier is the session's, and on equal times the bytewise smaller id (the derived
/// order: time, then id), so that the profile id is the same whatever the arrival order, batch
/// split or concurrency (SPEC §6, §6b "the first non-empty profile id among its events").
///
/// The PostgreSQL store's session upsert compares (time, id) the same way in SQL, with the id
/// in `COLLATE "C"`, which orders like Rust's `str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionProfile<'a> {
    /// Event time, ms, of the event that carried [`SessionProfile::id`].
    pub at: i64,
    /// A non-empty profile id.
    pub id: &'a str,
}

impl<'a> SessionProfile<'a> {
    /// The profile id of `event`, if it has a non-empty one.
    pub fn of(time_ms: i64, event: &'a NewEvent) -> Option<Self> {
        event
            .profile_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| Self { at: time_ms, id })
    }

    /// The one of `a` and `b` the session keeps; `None` only when both are.
    pub fn first(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What one request's new events change in one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDelta<'a> {
    /// Session id.
    pub session_id: &'a str,
    /// Device id of the session's first new event.
    pub device_id: &'a str,
    /// The first profile id among the new events, by [`SessionProfile::first`].
    pub profile: Option<SessionProfile<'a>>,
    /// Earliest new event time, ms.
    pub first: i64,
    /// Latest new event time, ms.
    pub last: i64,
    /// Number of new events.
    pub count: i64,
}

/// A group to create or update.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupWrite<'a> {
    /// Group id.
    pub id: &'a str,
    /// Group type.
    pub group_type: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Group properties as JSON text, each value as sent.
    pub properties: String,
}

/// A profile as the rules see it; stores keep its maps as JSON text.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `firstName`, `lastName`, `email`, `avatar` by wire name.
    pub fields: Map<String, Value>,
    /// Merged properties, each value's JSON text as sent (or as an exact sum computed).
    pub properties: RawMap,
    /// Event time (ms) of the value each field and property holds, by field name or
    /// `properties.<key>`.
    pub field_times: Map<String, Value>,
    /// First write, epoch ms.
    pub created_at: i64,
}

impl Profile {
    /// A profile with nothing set, created at `now`.
    pub fn empty(now: i64) -> Self {
        Self {
            fields: Map::new(),
            properties: RawMap::new(),
            field_times: Map::new(),
            created_at: now,
        }
    }

    /// A profile from its stored JSON columns; a column that is not a JSON object reads empty.
    pub fn from_columns(
        fields: &str,
        properties: &str,
        field_times: &str,
        created_at: i64,
    ) -> Self {
        Self {
            fields: json_map(fields),
            properties: raw_map(properties),
            field_times: json_map(field_times),
            created_at,
        }
    }

    /// Merges fields and properties; for each one the value with the later event time wins
    /// (ties go to the later row), so backfilled history never overwrites what the user set
    /// since (SPEC §6b).
    pub fn identify(
        &mut self,
        fields: &[(&'static str, String)],
        properties: &RawMap,
        time_ms: i64,
    ) {
        let newer = |key: String, times: &mut Map<String, Value>| -> bool {
            let wins = times
                .get(&key)
                .and_then(Value::as_i64)
                .is_none_or(|t| time_ms >= t);
            if wins {
                times.insert(key, Value::from(time_ms));
            }
            wins
        };
        for (name, value) in fields {
            if newer((*name).to_owned(), &mut self.field_times) {
                self.fields
                    .insert((*name).to_owned(), Value::String(value.clone()));
            }
        }
        for (key, value) in properties {
            if newer(format!("properties.{key}"), &mut self.field_times) {
                self.properties.insert(key.clone(), value.clone());
            }
        }
    }

    /// Adds `delta` exactly to a numeric property; a missing or null one counts as 0. A
    /// property that is not a number, or a sum that cannot be exact, refuses the row with the
    /// returned reason and changes nothing (SPEC §6b).
    pub fn increment(&mut self, property: &str, delta: Decimal) -> Result<(), String> {
        let current = self.properties.get(property).map(|v| v.get());
        let sum = add_exact(property, current, delta)?;
        let sum = RawValue::from_string(sum).map_err(|e| e.to_string())?;
        self.properties.insert(property.to_owned(), sum);
        Ok(())
    }
}

/// Reads a properties column, keeping each value's JSON text; anything else reads as empty.
pub fn raw_map(text: &str) -> RawMap {
    serde_json::from_str(text).unwrap_or_default()
}

/// Writes properties kept as JSON text.
pub fn raw_json(properties: &RawMap) -> String {
    serde_json::to_string(properties).unwrap_or_else(|_| "{}".to_owned())
}

/// Reads a JSON object column; anything else reads as empty.
pub fn json_map(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// What becomes of each row of one request, decided step by step as the store reports what
/// the database holds.
#[derive(Debug)]
pub struct Plan<'a> {
    rows: Vec<&'a PreparedRow>,
    /// `None` while the row is still to be written (and, at the end, for a stored row).
    outcomes: Vec<Option<RowOutcome>>,
    keys: Vec<&'a str>,
}

impl<'a> Plan<'a> {
    /// Starts a plan for `rows`, in request order. A key given to an earlier row of the same
    /// request makes a later row a duplicate at once, even if the earlier row is refused later
    /// on: the first row carrying a key speaks for it.
    pub fn new(rows: Vec<&'a PreparedRow>) -> Self {
        let mut seen = BTreeSet::new();
        let outcomes = rows
            .iter()
            .map(|row| match row.insert_id.as_deref() {
                Some(key) if !seen.insert(key) => Some(RowOutcome::Duplicate),
                _ => None,
            })
            .collect();
        Self {
            rows,
            outcomes,
            keys: seen.into_iter().collect(),
        }
    }

    /// The insert ids to claim, each once, sorted.
    pub fn keys(&self) -> &[&'a str] {
        &self.keys
    }

    /// Records which of [`Plan::keys`] were claimed by this request; the rows of the others are
    /// duplicates of what is stored (SPEC §5).
    pub fn claimed(&mut self, fresh: impl Fn(&str) -> bool) {
        for (row, outcome) in self.rows.iter().zip(&mut self.outcomes) {
            if outcome.is_none()
                && let Some(key) = row.insert_id.as_deref()
                && !fresh(key)
            {
                *outcome = Some(RowOutcome::Duplicate);
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &'a PreparedRow)> + '_ {
        self.rows
            .iter()
            .zip(&self.outcomes)
            .enumerate()
            .filter(|(_, (_, outcome))| outcome.is_none())
            .map(|(i, (row, _))| (i, *row))
    }

    /// The rows still to be written, in request order: before [`Plan::claimed`], every row but
    /// the later ones of a key repeated within the request.
    pub fn rows(&self) -> impl Iterator<Item = &'a PreparedRow> + '_ {
        self.live().map(|(_, row)| row)
    }

    /// The events to insert, in request order, with their rows.
    pub fn events(&self) -> impl Iterator<Item = (&'a PreparedRow, &'a NewEvent)> + '_ {
        self.live().filter_map(|(_, row)| match &row.action {
            RowAction::Event(event) => Some((row, event)),
            _ => None,
        })
    }

    /// The profiles the request changes or creates, sorted.
    pub fn profile_ids(&self) -> Vec<&'a str> {
        let ids: BTreeSet<&str> = self
            .live()
            .filter_map(|(_, row)| match &row.action {
                RowAction::Identify { profile_id, .. }
                | RowAction::Increment { profile_id, .. }
                | RowAction::AssignGroup { profile_id, .. } => Some(profile_id.as_str()),
                _ => None,
            })
            .collect();
        ids.into_iter().collect()
    }

    /// Applies the request's `identify` and `increment` rows, in request order, to `stored`
    /// (the stored profiles among [`Plan::profile_ids`]), creating missing ones at `now`.
    /// Returns the profiles to write back, sorted by id: those changed or created. A refused
    /// `increment` marks its row [`RowOutcome::Invalid`].
    pub fn apply_profiles(
        &mut self,
        mut stored: HashMap<String, Profile>,
        now: i64,
    ) -> Vec<(&'a str, Profile)> {
        let mut touched: BTreeMap<&'a str, Profile> = BTreeMap::new();
        for i in 0..self.rows.len() {
            if self.outcomes[i].is_some() {
                continue;
            }
            let row = self.rows[i];
            let (RowAction::Identify { profile_id, .. }
            | RowAction::Increment { profile_id, .. }
            | RowAction::AssignGroup { profile_id, .. }) = &row.action
            else {
                continue;
            };
            let profile = touched.entry(profile_id.as_str()).or_insert_with(|| {
                stored
                    .remove(profile_id.as_str())
                    .unwrap_or_else(|| Profile::empty(now))
            });
            match &row.action {
                RowAction::Identify {
                    fields, properties, ..
                } => profile.identify(fields, properties, row.time_ms),
                RowAction::Increment {
                    property, delta, ..
                } => {
                    if let Err(reason) = profile.increment(property, *delta) {
                        self.outcomes[i] = Some(RowOutcome::Invalid(reason));
                    }
                }
                _ => {}
            }
        }
        touched.into_iter().collect()
    }

    /// The groups to upsert, sorted by id; of several rows for one group the last one wins.
    pub fn groups(&self) -> Vec<GroupWrite<'a>> {
        let mut groups = BTreeMap::new();
        for (_, row) in self.live() {
            if let RowAction::Group {
                id,
                group_type,
                name,
                properties,
            } = &row.action
            {
                groups.insert(
                    id.as_str(),
                    GroupWrite {
                        id,
                        group_type,
                        name,
                        properties: raw_json(properties),
                    },
                );
            }
        }
        groups.into_values().collect()
    }

    /// The (profile id, group id) pairs to add, sorted and each once.
    pub fn assignments(&self) -> Vec<(&'a str, &'a str)> {
        let pairs: BTreeSet<(&str, &str)> = self
            .live()
            .filter_map(|(_, row)| match &row.action {
                RowAction::AssignGroup {
                    profile_id,
                    group_ids,
                } => Some(
                    group_ids
                        .iter()
                        .map(move |g| (profile_id.as_str(), g.as_str())),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        pairs.into_iter().collect()
    }

    /// The keys of refused rows, sorted: a refused row leaves no trace, not even its key, so
    /// that a corrected resend is stored (SPEC §4 "Rejected rows never change stored data").
    pub fn refused_keys(&self) -> Vec<&'a str> {
        let keys: BTreeSet<&str> = self
            .rows
            .iter()
            .zip(&self.outcomes)
            .filter(|(_, o)| matches!(o, Some(RowOutcome::Invalid(_))))
            .filter_map(|(row, _)| row.insert_id.as_deref())
            .collect();
        keys.into_iter().collect()
    }

    /// What the request's new events change in each session, sorted by session id. Server
    /// events (no session) change none.
    pub fn sessions(&self) -> Vec<SessionDelta<'a>> {
        let mut sessions: HashMap<&'a str, SessionDelta<'a>> = HashMap::new();
        for (row, event) in self.events() {
            if event.session_id.is_empty() {
                continue;
            }
            let delta = sessions
                .entry(&event.session_id)
                .or_insert_with(|| SessionDelta {
                    session_id: &event.session_id,
                    device_id: &event.device_id,
                    profile: None,
                    first: row.time_ms,
                    last: row.time_ms,
                    count: 0,
                });
            delta.first = delta.first.min(row.time_ms);
            delta.last = delta.last.max(row.time_ms);
            delta.count += 1;
            delta.profile =
                SessionProfile::first(delta.profile, SessionProfile::of(row.time_ms, event));
        }
        let mut sessions: Vec<_> = sessions.into_values().collect();
        sessions.sort_unstable_by(|a, b| a.session_id.cmp(b.session_id));
        sessions
    }

    /// One outcome per row, in request order.
    pub fn outcomes(self) -> Vec<RowOutcome> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or(RowOutcome::Stored))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: Option<&str>, session: &str, t: i64, profile: Option<&str>) -> PreparedRow {
        PreparedRow {
            insert_id: key.map(str::to_owned),
            time_ms: t,
            action: RowAction::Event(NewEvent {
                id: uuid::Uuid::nil(),
                name: "reading".to_owned(),
                device_id: "d".to_owned(),
                session_id: session.to_owned(),
                profile_id: profile.map(str::to_owned),
                properties: "{}".to_owned(),
                groups: None,
            }),
        }
    }

    fn increment(key: &str, profile: &str, property: &str) -> PreparedRow {
        PreparedRow {
            insert_id: Some(key.to_owned()),
            time_ms: 0,
            action: RowAction::Increment {
                profile_id: profile.to_owned(),
                property: property.to_owned(),
                delta: Decimal::ONE,
            },
        }
    }

    #[test]
    fn a_key_is_claimed_once_and_its_later_rows_are_duplicates() {
        let rows = [
            event(Some("b"), "s", 1, None),
            event(Some("a"), "s", 2, None),
            event(Some("b"), "s", 3, None),
            event(None, "s", 4, None),
            event(Some("c"), "s", 5, None),
        ];
        let mut plan = Plan::new(rows.iter().collect());
        assert_eq!(plan.keys(), ["a", "b", "c"]);
        plan.claimed(|k| k != "c");
        let times: Vec<i64> = plan.events().map(|(r, _)| r.time_ms).collect();
        assert_eq!(times, [1, 2, 4]);
        assert_eq!(
            plan.outcomes(),
            [
                RowOutcome::Stored,
                RowOutcome::Stored,
                RowOutcome::Duplicate,
                RowOutcome::Stored,
                RowOutcome::Duplicate,
            ]
        );
    }

    #[test]
    fn sessions_gather_the_new_events_sorted_by_id() {
        let rows = [
            event(Some("1"), "s2", 50, None),
            event(Some("2"), "s1", 30, Some("")),
            event(Some("3"), "s1", 20, Some("q")),
            event(Some("4"), "s1", 10, Some("p")),
            event(Some("5"), "s1", 5, Some("o")),
            event(None, "", 1, None),
        ];
        let mut plan = Plan::new(rows.iter().collect());
        plan.claimed(|k| k != "5");
        let sessions = plan.sessions();
        assert_eq!(
            sessions,
            [
                SessionDelta {
                    session_id: "s1",
                    device_id: "d",
                    profile: Some(SessionProfile { at: 10, id: "p" }),
                    first: 10,
                    last: 30,
                    count: 3,
                },
                SessionDelta {
                    session_id: "s2",
                    device_id: "d",
                    profile: None,
                    first: 50,
                    last: 50,
                    count: 1,
                },
            ]
        );
        assert_eq!(session_start_time(10), 10 - SESSION_START_LEAD_MS);
    }

    #[test]
    fn the_earlier_profile_id_wins_then_the_bytewise_smaller() {
        let p = |at, id| Some(SessionProfile { at, id });
        assert_eq!(SessionProfile::first(p(20, "a"), p(10, "b")), p(10, "b"));
        assert_eq!(SessionProfile::first(p(10, "b"), p(20, "a")), p(10, "b"));
        assert_eq!(
            SessionProfile::first(p(10, "alpha"), p(10, "Zeta")),
            p(10, "Zeta")
        );
        assert_eq!(
            SessionProfile::first(p(10, "Zeta"), p(10, "alpha")),
            p(10, "Zeta")
        );
        assert_eq!(SessionProfile::first(None, p(30, "c")), p(30, "c"));
        assert_eq!(SessionProfile::first(p(30, "c"), None), p(30, "c"));
        assert_eq!(SessionProfile::first(None, None), None);
    }

    #[test]
    fn a_refused_increment_changes_nothing_and_releases_its_key() {
        let rows = [
            increment("k1", "p", "count"),
            increment("k2", "p", "name"),
            increment("k3", "p", "count"),
        ];
        let mut plan = Plan::new(rows.iter().collect());
        plan.claimed(|_| true);
        assert_eq!(plan.profile_ids(), ["p"]);
        let mut stored = Profile::empty(7);
        stored.properties.insert("name".into(), raw("\"Ada\""));
        stored.properties.insert("count".into(), raw("1.50"));
        let written = plan.apply_profiles(HashMap::from([("p".to_owned(), stored)]), 9);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].1.properties["count"].get(), "3.50");
        assert_eq!(written[0].1.properties["name"].get(), "\"Ada\"");
        assert_eq!(written[0].1.created_at, 7);
        assert_eq!(plan.refused_keys(), ["k2"]);
        let outcomes = plan.outcomes();
        assert!(matches!(&outcomes[1], RowOutcome::Invalid(r) if r.contains("name")));
        assert_eq!(outcomes[2], RowOutcome::Stored);
    }

    #[test]
    fn identify_keeps_the_value_of_the_later_event_time() {
        let mut p = Profile::empty(0);
        let props = |v: &str| RawMap::from_iter([("plan".to_owned(), raw(v))]);
        p.identify(&[("email", "new@x.io".into())], &props("2"), 200);
        p.identify(&[("email", "old@x.io".into())], &props("1"), 100);
        assert_eq!(p.fields["email"], Value::from("new@x.io"));
        assert_eq!(p.properties["plan"].get(), "2");
        p.identify(&[("email", "same@x.io".into())], &RawMap::new(), 200);
        assert_eq!(
            p.fields["email"],
            Value::from("same@x.io"),
            "ties go to the later row"
        );
        assert_eq!(
            p.increment("plan", Decimal::NEGATIVE_ONE * Decimal::TWO),
            Ok(())
        );
        assert_eq!(p.properties["plan"].get(), "0");
        assert!(p.increment("missing", Decimal::new(25, 2)).is_ok());
        assert_eq!(p.properties["missing"].get(), "0.25");
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("JSON")
    }
}
