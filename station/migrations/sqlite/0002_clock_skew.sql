-- 2: device clocks found skewed when they pushed a report's changes.
CREATE TABLE clock_skew (
    report_id BLOB NOT NULL,
    device_id BLOB NOT NULL,
    skew_ms INTEGER NOT NULL,
    observed_at INTEGER NOT NULL,
    PRIMARY KEY (report_id, device_id)
);
