//! Read-side queries of the embedded store.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use backfill_protocol::limits::SESSION_START_LEAD_MS;

use crate::store::rules::{json_map, raw_map};
use crate::store::{EventQuery, SessionQuery, StoredEvent, StoredProfile, StoredSession};

/// Builds `WHERE` clauses and their parameters together so they cannot drift apart.
struct Filter {
    clauses: Vec<String>,
    params: Vec<SqlValue>,
}

impl Filter {
    /// Rows of `project`, found through an index that starts with the project.
    fn new(project: i64) -> Self {
        Self {
            clauses: vec!["project = ?1".to_owned()],
            params: vec![SqlValue::Integer(project)],
        }
    }

    /// Rows of `project`, checked on each row of a time-ordered scan: the `+` keeps SQLite from
    /// planning on the project column, which sits after the time in the index and would make it
    /// sort what the index already gives in order.
    fn new_in_time_order(project: i64) -> Self {
        Self {
            clauses: vec!["+project = ?1".to_owned()],
            params: vec![SqlValue::Integer(project)],
        }
    }

    /// Adds `clause`, numbering each of its `?` placeholders after the parameters so far.
    fn push(&mut self, clause: &str, values: Vec<SqlValue>) {
        let mut pieces = clause.split('?');
        let mut numbered = pieces.next().unwrap_or_default().to_owned();
        for (piece, value) in pieces.zip(values) {
            self.params.push(value);
            numbered.push_str(&format!("?{}{piece}", self.params.len()));
        }
        self.clauses.push(numbered);
    }

    fn text(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.push(&format!("{column} = ?"), vec![SqlValue::Text(v.clone())]);
        }
    }

    fn range(&mut self, column: &str, from: Option<i64>, to: Option<i64>) {
        if let Some(from) = from {
            self.push(&format!("{column} >= ?"), vec![SqlValue::Integer(from)]);
        }
        if let Some(to) = to {
            self.push(&format!("{column} <= ?"), vec![SqlValue::Integer(to)]);
        }
    }

    /// Rows strictly after (`t`, `id`) in (`column`, id) order. The plain `>=` gives the index
    /// a lower bound, so a page starts where the last one ended instead of at the beginning.
    fn after(&mut self, column: &str, t: i64, id: SqlValue) {
        self.push(
            &format!("{column} >= ? AND ({column} > ? OR id > ?)"),
            vec![SqlValue::Integer(t), SqlValue::Integer(t), id],
        );
    }

    fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `SELECT` of an events page and its parameters, or `None` when no row can match.
fn events_query(
    conn: &Connection,
    q: &EventQuery,
) -> rusqlite::Result<Option<(String, Vec<SqlValue>)>> {
    let mut f = Filter::new_in_time_order(q.project);
    f.text("device_id", &q.device_id);
    f.text("name", &q.name);
    f.range("created_at", q.from, q.to);
    if let Some(session_id) = &q.session_id {
        // A session's events lie between its session_start and its latest event, so the time
        // index narrows the scan to them.
        let span: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT started_at, ended_at FROM sessions WHERE project = ?1 AND id = ?2",
            )?
            .query_row(params![q.project, session_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((started_at, ended_at)) = span else {
            return Ok(None);
        };
        f.range(
            "created_at",
            Some(started_at - SESSION_START_LEAD_MS),
            Some(ended_at),
        );
        f.text("session_id", &q.session_id);
    }
    if let Some((t, id)) = &q.after {
        let id = uuid::Uuid::parse_str(id)
            .map(|u| u.as_bytes().to_vec())
            .unwrap_or_default();
        f.after("created_at", *t, SqlValue::Blob(id));
    }
    // One project, so (created_at, project, id) is (created_at, id) order: the time index's
    // own order, in which SQLite sorts only the events of one millisecond by id.
    let sql = format!(
        "SELECT id, name, type, device_id, session_id, profile_id, created_at, properties,
                synced_at, properties ->> '$.__insertId'
         FROM events WHERE {} ORDER BY created_at, project, id LIMIT {}",
        f.sql(),
        limit(q.limit)
    );
    Ok(Some((sql, f.params)))
}

pub(super) fn events(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Vec<StoredEvent>> {
    let Some((sql, params)) = events_query(conn, q)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), |r| {
        let id: Vec<u8> = r.get(0)?;
        Ok(StoredEvent {
            id: uuid::Uuid::from_slice(&id)
                .map(|u| u.to_string())
                .unwrap_or_default(),
            name: r.get(1)?,
            kind: r.get(2)?,
            device_id: r.get(3)?,
            session_id: r.get(4)?,
            profile_id: r.get(5)?,
            created_at: r.get(6)?,
            properties: raw_map(&r.get::<_, String>(7)?),
            synced_at: r.get(8)?,
            insert_id: r.get(9)?,
        })
    })?;
    rows.collect()
}

pub(super) fn sessions(
    conn: &Connection,
    q: &SessionQuery,
) -> rusqlite::Result<Vec<StoredSession>> {
    let mut f = Filter::new(q.project);
    f.text("device_id", &q.device_id);
    f.range("started_at", q.from, q.to);
    if let Some((t, id)) = &q.after {
        f.after("started_at", *t, SqlValue::Text(id.clone()));
    }
    let sql = format!(
        "SELECT id, device_id, profile_id, started_at, ended_at, event_count
         FROM sessions WHERE {} ORDER BY started_at, id LIMIT {}",
        f.sql(),
        limit(q.limit)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(f.params.iter()), |r| {
        Ok(StoredSession {
            id: r.get(0)?,
            device_id: r.get(1)?,
            profile_id: r.get(2)?,
            started_at: r.get(3)?,
            ended_at: r.get(4)?,
            event_count: r.get(5)?,
        })
    })?;
    rows.collect()
}

pub(super) fn profile(
    conn: &Connection,
    project: i64,
    id: &str,
) -> rusqlite::Result<Option<StoredProfile>> {
    let found = conn
        .prepare_cached(
            "SELECT fields, properties, created_at, updated_at FROM profiles
             WHERE project = ?1 AND id = ?2",
        )?
        .query_row(params![project, id], |r| {
            Ok((
                json_map(&r.get::<_, String>(0)?),
                raw_map(&r.get::<_, String>(1)?),
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .optional()?;
    let Some((fields, properties, created_at, updated_at)) = found else {
        return Ok(None);
    };
    let groups = conn
        .prepare_cached(
            "SELECT group_id FROM profile_groups WHERE project = ?1 AND profile_id = ?2 ORDER BY group_id",
        )?
        .query_map(params![project, id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(StoredProfile {
        id: id.to_owned(),
        fields,
        properties,
        groups,
        created_at,
        updated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, q: &EventQuery) -> String {
        let (sql, params) = events_query(conn, q).expect("query").expect("some");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let steps = stmt
            .query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("steps");
        steps.join("; ")
    }

    #[test]
    fn pages_are_read_from_the_time_index_where_the_last_one_ended() {
        let mut conn = Connection::open_in_memory().expect("open");
        super::super::schema::migrate(&mut conn).expect("schema");
        let first = EventQuery {
            project: 1,
            limit: 100,
            after: None,
            device_id: None,
            session_id: None,
            name: None,
            from: None,
            to: None,
        };
        let next = EventQuery {
            after: Some((1_764_288_000_000, uuid::Uuid::nil().to_string())),
            ..first.clone()
        };
        conn.execute(
            "INSERT INTO sessions (project, id, device_id, started_at, ended_at, event_count,
                start_event) VALUES (1, 's', 'd', 10, 20, 1, 1)",
            [],
        )
        .expect("session");
        let filtered = EventQuery {
            device_id: Some("d".to_owned()),
            name: Some("reading".to_owned()),
            from: Some(1),
            to: Some(2),
            ..next.clone()
        };
        let in_session = EventQuery {
            session_id: Some("s".to_owned()),
            ..first.clone()
        };
        for q in [&first, &next, &filtered, &in_session] {
            let plan = plan(&conn, q);
            assert!(plan.contains("events_by_time"), "{plan}");
            // Only the events of one millisecond are sorted (by id), never the whole range.
            assert!(
                !plan.contains("TEMP B-TREE FOR ORDER BY"),
                "no full sort: {plan}"
            );
        }
        let plan = plan(&conn, &next);
        assert!(plan.contains("created_at>?"), "a lower bound: {plan}");
    }
}
