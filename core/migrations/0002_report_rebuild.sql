-- 2: the materialised report gained the replayed lifecycle, amendments,
-- review and referral; reports listed here are rebuilt from their changes
-- when the store opens (and a later format change can reuse it).
CREATE TABLE rematerialise (report_id BLOB PRIMARY KEY);
INSERT INTO rematerialise SELECT DISTINCT report_id FROM changes;
