//! Read-side queries of the PostgreSQL store.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::store::rules::{json_map, raw_map, session_start_time};
use crate::store::{EventQuery, SessionQuery, StoredEvent, StoredProfile, StoredSession};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;
type Param = Box<dyn ToSql + Sync + Send>;

/// Builds `WHERE` clauses and their parameters together so they cannot drift apart.
struct Filter {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    fn new(project: i64) -> Self {
        Self {
            clauses: vec!["project = $1".to_owned()],
            params: vec![Box::new(project)],
        }
    }

    /// Adds `clause`, numbering each of its `$` placeholders after the parameters so far.
    fn push(&mut self, clause: &str, values: Vec<Param>) {
        let mut pieces = clause.split('$');
        let mut numbered = pieces.next().unwrap_or_default().to_owned();
        for (piece, value) in pieces.zip(values) {
            self.params.push(value);
            numbered.push_str(&format!("${}{piece}", self.params.len()));
        }
        self.clauses.push(numbered);
    }

    fn text(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.push(&format!("{column} = $"), vec![Box::new(v.clone())]);
        }
    }

    fn range(&mut self, column: &str, from: Option<i64>, to: Option<i64>) {
        if let Some(from) = from {
            self.push(&format!("{column} >= $"), vec![Box::new(from)]);
        }
        if let Some(to) = to {
            self.push(&format!("{column} <= $"), vec![Box::new(to)]);
        }
    }

    fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) async fn events(client: &Client, q: &EventQuery) -> Result<Vec<StoredEvent>> {
    let mut f = Filter::new(q.project);
    // Marker rows of profile and group changes are not events.
    f.clauses.push("type = 'track'".to_owned());
    f.text("device_id", &q.device_id);
    f.text("name", &q.name);
    f.range("created_at", q.from, q.to);
    if let Some(session_id) = &q.session_id {
        // A session's events lie between its session_start and its latest event, so the
        // primary key narrows the scan to them.
        let span = client
            .query_opt(
                "SELECT started_at, ended_at FROM sessions WHERE project = $1 AND id = $2",
                &[&q.project, session_id],
            )
            .await?;
        let Some(span) = span else {
            return Ok(Vec::new());
        };
        f.range(
            "created_at",
            Some(session_start_time(span.try_get(0)?)),
            Some(span.try_get(1)?),
        );
        f.text("session_id", &q.session_id);
    }
    if let Some((t, id)) = &q.after {
        let id = uuid::Uuid::parse_str(id).unwrap_or_default();
        f.push(
            "(created_at, id) > ($, $)",
            vec![Box::new(*t), Box::new(id)],
        );
    }
    let sql = format!(
        "SELECT id, name, type, device_id, session_id, profile_id, created_at, properties,
                synced_at, insert_id
         FROM events WHERE {} ORDER BY created_at, id LIMIT {}",
        f.sql(),
        limit(q.limit)
    );
    let rows = client.query(&sql, &f.refs()).await?;
    rows.iter()
        .map(|r| {
            Ok(StoredEvent {
                id: r.try_get::<_, uuid::Uuid>(0)?.to_string(),
                name: r.try_get(1)?,
                kind: r.try_get(2)?,
                device_id: r.try_get(3)?,
                session_id: r.try_get(4)?,
                profile_id: r.try_get(5)?,
                created_at: r.try_get(6)?,
                properties: raw_map(r.try_get(7)?),
                synced_at: r.try_get(8)?,
                insert_id: r.try_get(9)?,
            })
        })
        .collect()
}

pub(super) async fn sessions(client: &Client, q: &SessionQuery) -> Result<Vec<StoredSession>> {
    let mut f = Filter::new(q.project);
    f.text("device_id", &q.device_id);
    f.range("started_at", q.from, q.to);
    if let Some((t, id)) = &q.after {
        f.push(
            "(started_at, id) > ($, $)",
            vec![Box::new(*t), Box::new(id.clone())],
        );
    }
    let sql = format!(
        "SELECT id, device_id, profile_id, started_at, ended_at, event_count
         FROM sessions WHERE {} ORDER BY started_at, id LIMIT {}",
        f.sql(),
        limit(q.limit)
    );
    let rows = client.query(&sql, &f.refs()).await?;
    rows.iter()
        .map(|r| {
            Ok(StoredSession {
                id: r.try_get(0)?,
                device_id: r.try_get(1)?,
                profile_id: r.try_get(2)?,
                started_at: r.try_get(3)?,
                ended_at: r.try_get(4)?,
                event_count: r.try_get(5)?,
            })
        })
        .collect()
}

pub(super) async fn profile(
    client: &Client,
    project: i64,
    id: &str,
) -> Result<Option<StoredProfile>> {
    let Some(row) = client
        .query_opt(
            "SELECT fields, properties, created_at, updated_at FROM profiles
             WHERE project = $1 AND id = $2",
            &[&project, &id],
        )
        .await?
    else {
        return Ok(None);
    };
    let groups = client
        .query(
            "SELECT group_id FROM profile_groups WHERE project = $1 AND profile_id = $2
             ORDER BY group_id COLLATE \"C\"",
            &[&project, &id],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>>>()?;
    Ok(Some(StoredProfile {
        id: id.to_owned(),
        fields: json_map(row.try_get(0)?),
        properties: raw_map(row.try_get(1)?),
        groups,
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
    }))
}
