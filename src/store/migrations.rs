//! The schema, as an ordered list of migrations. Append only: a released migration is never
//! edited; a change is a new migration with the next version number.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The newest schema this binary understands.
pub const SCHEMA_VERSION: i64 = match MIGRATIONS.last() {
    Some(m) => m.version,
    None => 0,
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "grants: trust keys, applied bundle, users, grants, revocations, tokens",
        sql: "
-- Trusted Ed25519 keys (config, trust import, or a verified key set). Never deleted: a retired
-- key stays so that it can never be re-added.
CREATE TABLE trust_keys (
    kid TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    not_after_ms INTEGER,
    retired_ms INTEGER,
    source TEXT NOT NULL,
    added_ms INTEGER NOT NULL
);
-- Applied key-set envelopes, newest seq wins.
CREATE TABLE grant_keysets (
    seq INTEGER PRIMARY KEY,
    payload_sha256 TEXT NOT NULL,
    envelope BLOB NOT NULL,
    applied_ms INTEGER NOT NULL
);
-- The applied bundle: exact envelope bytes, re-verified on start-up (one row).
CREATE TABLE grant_bundle (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    applied_ms INTEGER NOT NULL
);
-- Every bundle seq ever applied with its payload hash (replay and equivocation detection).
CREATE TABLE grant_bundle_history (
    seq INTEGER PRIMARY KEY,
    payload_sha256 TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    applied_ms INTEGER NOT NULL
);
-- Queryable mirror of the applied bundle's users and grants.
CREATE TABLE grant_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    active INTEGER NOT NULL,
    password TEXT
);
CREATE TABLE grant_grants (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    not_before_ms INTEGER,
    expires_at_ms INTEGER
);
CREATE INDEX grant_grants_user ON grant_grants(user_id);
-- Irreversible revocations; a row may be pruned only after the grant's own expiry passed.
CREATE TABLE grant_revocations (
    grant_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    revoked_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);
-- Admitted installer tokens (exact envelope bytes, re-verified on start-up).
CREATE TABLE grant_tokens (
    grant_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    envelope BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    admitted_ms INTEGER NOT NULL
);
",
    },
    Migration {
        version: 3,
        name: "authz: sessions, login throttle, token grants, local grants, access requests",
        sql: "
-- Login sessions. Only the SHA-256 of the bearer token is stored.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    method TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    client TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user);
CREATE INDEX sessions_expires ON sessions(expires_ms);
-- Failed-login throttling per account (`acct:<email hash>`) and per client (`ip:<addr>`).
CREATE TABLE login_throttle (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure_ms INTEGER NOT NULL,
    next_allowed_ms INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL
);
-- Installer-token logins: the cloud-signed user and grant, kept until the grant expires.
CREATE TABLE token_grants (
    grant_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    not_before_ms INTEGER,
    expires_ms INTEGER,
    added_ms INTEGER NOT NULL
);
-- Delegations made on this box (independent sites), signed by the device key.
CREATE TABLE local_grants (
    id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    sig TEXT NOT NULL,
    user TEXT NOT NULL,
    delegator TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    revoked_by TEXT
);
-- Pending delegations (pro sites) and access requests, queued for the cloud.
CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('delegation', 'access')),
    requester TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_ms INTEGER,
    note TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    status TEXT NOT NULL
);
",
    },
    Migration {
        version: 4,
        name: "auth: the credential a session was opened with",
        sql: "
-- A fingerprint of the password verifier a password session was opened with ('' for token
-- sessions): a bundle that changes the password ends the session.
ALTER TABLE sessions ADD COLUMN credential TEXT NOT NULL DEFAULT '';
",
    },
    Migration {
        version: 5,
        name: "business suspensions; the business of an installer-token user; request resolution time",
        sql: "
-- Service businesses the site owner suspended on this box. A row exists while the suspension
-- holds; restoring deletes it (the audit trail keeps the history). `members` is the JSON list of
-- user ids that belonged to the business when it was suspended.
CREATE TABLE business_suspensions (
    business TEXT PRIMARY KEY,
    suspended_ms INTEGER NOT NULL,
    suspended_by TEXT NOT NULL,
    note TEXT NOT NULL,
    members TEXT NOT NULL
);
ALTER TABLE token_grants ADD COLUMN business TEXT;
-- When an access request stopped being pending (granted, denied or expired).
ALTER TABLE access_requests ADD COLUMN resolved_ms INTEGER;
",
    },
    Migration {
        version: 6,
        name: "one table of installer tokens: token_grants merged into grant_tokens",
        sql: "
-- Installer tokens admitted at the LAN login were kept decoded in `token_grants`, without their
-- signature; tokens admitted over MQTT kept their envelope in `grant_tokens`. From this version
-- every token keeps its envelope in `grant_tokens` and is re-verified on every start. A
-- `token_grants` row moves over with an empty envelope: it cannot be re-verified, so the first
-- start drops it with a `token_dropped` audit record (reason `malformed`) and its holder logs in
-- with the token again. A grant id present in both keeps its signed row.
INSERT OR IGNORE INTO grant_tokens(grant_id, user_id, envelope, expires_at_ms, admitted_ms)
    SELECT grant_id, user_id, X'', COALESCE(expires_ms, 0), added_ms FROM token_grants;
DROP TABLE token_grants;
",
    },
];
