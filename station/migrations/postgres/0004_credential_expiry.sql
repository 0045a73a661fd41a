-- 4: credentials expire. Devices enrolled before get 180 days from
-- enrollment, and at least 30 from this upgrade.
ALTER TABLE devices ADD COLUMN credential_expires_at BIGINT;
UPDATE devices SET credential_expires_at = GREATEST(
    enrolled_at + 15552000000,
    (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT + 2592000000);
