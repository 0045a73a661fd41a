-- 5: dashboard accounts, moved from `dashboard/users.json` (imported by the
-- dashboard on start): secrets sealed with the station key.
CREATE TABLE dashboard_accounts (
    star_number TEXT PRIMARY KEY,
    device_id UUID NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_sealed BYTEA NOT NULL,
    store_key_sealed BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);
