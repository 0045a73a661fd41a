-- 1: initial schema.
CREATE TABLE devices (
    device_id BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    record TEXT NOT NULL,
    person_key TEXT NOT NULL,
    role TEXT NOT NULL,
    unit TEXT NOT NULL,
    credential_hash BLOB NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE enrollment_codes (
    code_hash BLOB PRIMARY KEY,
    person TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by BLOB
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
    acked INTEGER NOT NULL DEFAULT 1,
    received_at INTEGER NOT NULL,
    UNIQUE (device_id, seq),
    UNIQUE (report_id, device_id, prev)
);
CREATE TABLE reports (
    report_id BLOB PRIMARY KEY,
    unit TEXT NOT NULL,
    created_by BLOB NOT NULL,
    lifecycle TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX reports_unit ON reports (unit);
CREATE TABLE report_access (
    person_key TEXT NOT NULL,
    report_id BLOB NOT NULL,
    PRIMARY KEY (person_key, report_id)
);
CREATE TABLE media (
    sha256 TEXT PRIMARY KEY,
    total INTEGER NOT NULL,
    received INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE media_refs (
    sha256 TEXT NOT NULL,
    report_id BLOB NOT NULL,
    PRIMARY KEY (sha256, report_id)
);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    device_id BLOB,
    reason TEXT NOT NULL,
    bytes BLOB NOT NULL
);
