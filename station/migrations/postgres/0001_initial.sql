-- 1: initial schema.
CREATE TABLE devices (
    device_id UUID PRIMARY KEY,
    public_key BYTEA NOT NULL,
    record TEXT NOT NULL,
    person_key TEXT NOT NULL,
    role TEXT NOT NULL,
    unit TEXT NOT NULL,
    credential_hash BYTEA NOT NULL UNIQUE,
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE enrollment_codes (
    code_hash BYTEA PRIMARY KEY,
    person TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by UUID
);
CREATE TABLE changes (
    id BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE,
    device_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    report_id UUID NOT NULL,
    prev BYTEA NOT NULL,
    body BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    hlc_wall BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (device_id, seq),
    UNIQUE (report_id, device_id, prev)
);
CREATE INDEX changes_report ON changes (report_id, id);
CREATE TABLE reports (
    report_id UUID PRIMARY KEY,
    unit TEXT NOT NULL,
    created_by UUID NOT NULL,
    lifecycle TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX reports_unit ON reports (unit);
CREATE TABLE report_access (
    person_key TEXT NOT NULL,
    report_id UUID NOT NULL,
    PRIMARY KEY (person_key, report_id)
);
CREATE TABLE media (
    sha256 TEXT PRIMARY KEY,
    total BIGINT NOT NULL,
    received BIGINT NOT NULL,
    complete BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE media_refs (
    sha256 TEXT NOT NULL,
    report_id UUID NOT NULL,
    PRIMARY KEY (sha256, report_id)
);
CREATE TABLE rejected (
    id BIGSERIAL PRIMARY KEY,
    received_at BIGINT NOT NULL,
    device_id UUID,
    reason TEXT NOT NULL,
    bytes BYTEA NOT NULL
);
