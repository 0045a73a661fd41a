-- 1: initial schema.
CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device_id BLOB NOT NULL,
    secret_key BLOB NOT NULL,
    -- Highest clock seen from peers; the device's own clock and next
    -- sequence number are derived from its newest change.
    hlc_wall INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL
);
CREATE TABLE devices (
    device_id BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    device_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    report_id BLOB NOT NULL,
    prev BLOB NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    hlc_wall INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    UNIQUE (device_id, seq),
    UNIQUE (report_id, device_id, prev)
);
-- UNIQUE (report_id, device_id, prev) also serves lookups by report.
CREATE INDEX changes_outbox ON changes (id) WHERE acked = 0;
CREATE TABLE reports (
    report_id BLOB PRIMARY KEY,
    lifecycle TEXT NOT NULL,
    occurred_start INTEGER,
    updated_ms INTEGER NOT NULL,
    updated_counter INTEGER NOT NULL,
    conflict_count INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX reports_updated ON reports (updated_ms DESC, updated_counter DESC, report_id);
CREATE TABLE media (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mime_type TEXT NOT NULL,
    stored_at INTEGER NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sync_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
