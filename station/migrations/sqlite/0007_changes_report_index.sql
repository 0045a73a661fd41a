-- 7: a report's changes in log order without a sort (the PostgreSQL engine
-- had this index from its first step; the conformance suite found the
-- difference).
CREATE INDEX changes_report ON changes (report_id, id);
