-- 4: credentials expire. Devices enrolled before get 180 days from
-- enrollment, and at least 30 from this upgrade.
ALTER TABLE devices ADD COLUMN credential_expires_at INTEGER;
UPDATE devices SET credential_expires_at = max(
    enrolled_at + 15552000000,
    CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 2592000000);
