//! The schema, as an ordered list of migrations. Append only: a released migration is never
//! edited; a change is a new migration with the next version number.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The newest schema this binary understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "core: meta, audit, outbox",
    sql: "
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Hash-chained audit trail: hash = SHA-256(prev_hash || canonical row), see audit.rs.
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    unit TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at_ms);
CREATE INDEX audit_unit ON audit(unit, seq);
CREATE INDEX audit_kind ON audit(kind, seq);
-- Store-and-forward queue for MQTT. A row leaves only on PUBACK (QoS 1) or after send (QoS 0).
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    class TEXT NOT NULL CHECK (class IN ('event', 'request', 'telemetry', 'state')),
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1)),
    retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
    created_ms INTEGER NOT NULL
);
CREATE INDEX outbox_class ON outbox(class, seq);
",
}];
