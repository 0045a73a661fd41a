-- 2: device clocks found skewed when they pushed a report's changes.
CREATE TABLE clock_skew (
    report_id UUID NOT NULL,
    device_id UUID NOT NULL,
    skew_ms BIGINT NOT NULL,
    observed_at BIGINT NOT NULL,
    PRIMARY KEY (report_id, device_id)
);
