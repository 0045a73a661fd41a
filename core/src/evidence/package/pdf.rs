//! A readable PDF of one report for the package: fields, kept conflicts,
//! field history summary, media with hashes, devices; times in the
//! incident's time zone and in UTC.
//!
//! Rendering is deterministic (same inputs, same bytes), so the verifier
//! re-renders it from the verified history and compares. It uses the PDF
//! base-14 fonts with WinAnsi encoding: no font files, text extractable by
//! any reader; characters outside that set print as `?` (the JSON in the
//! bag holds the exact text).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use pdf_writer::{Content, Date, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use uuid::Uuid;

use super::DeviceEnrollment;
use crate::crdt::{Change, Hash, Hlc};
use crate::model::{Report, Value};

pub struct PdfInput<'a> {
    pub report: &'a Report,
    pub changes: &'a [Change],
    pub devices: &'a BTreeMap<Uuid, DeviceEnrollment>,
    /// The station's receipt time of each change, by hash.
    pub received: &'a BTreeMap<Hash, DateTime<Utc>>,
    pub station: &'a str,
    pub exported_at: DateTime<Utc>,
}

const PAGE_W: f32 = 612.0;
const PAGE_H: f32 = 792.0;
const MARGIN: f32 = 54.0;
const TOP: f32 = PAGE_H - 54.0;
const BOTTOM: f32 = 64.0;
const BODY_SIZE: f32 = 8.5;
/// Courier advances 0.6 em per character.
const BODY_CHARS: usize = ((PAGE_W - 2.0 * MARGIN) / (0.6 * BODY_SIZE)) as usize;
const FOOTER_CHARS: usize = ((PAGE_W - 2.0 * MARGIN) / (0.6 * 7.0)) as usize;

#[derive(Clone, Copy)]
enum Style {
    Title,
    Heading,
    Sub,
    Body,
    Footer,
}

impl Style {
    /// (font resource, size, leading)
    fn metrics(self) -> (&'static [u8], f32, f32) {
        match self {
            Style::Title => (b"F1", 16.0, 24.0),
            Style::Heading => (b"F1", 12.0, 22.0),
            Style::Sub => (b"F1", 9.5, 15.0),
            Style::Body => (b"F2", BODY_SIZE, 11.0),
            Style::Footer => (b"F2", 7.0, 9.0),
        }
    }
}

struct Line {
    style: Style,
    x: f32,
    y: f32,
    text: Vec<u8>,
}

struct Layout {
    pages: Vec<Vec<Line>>,
    y: f32,
    tz: Option<Tz>,
}

impl Layout {
    fn new(tz: Option<Tz>) -> Self {
        Layout {
            pages: vec![Vec::new()],
            y: TOP,
            tz,
        }
    }

    fn put(&mut self, style: Style, indent: usize, text: &str) {
        let (_, _, leading) = style.metrics();
        if self.y - leading < BOTTOM {
            self.pages.push(Vec::new());
            self.y = TOP;
        }
        self.y -= leading;
        let x = MARGIN + indent as f32 * 0.6 * BODY_SIZE;
        let line = Line {
            style,
            x,
            y: self.y,
            text: win_ansi(text),
        };
        // `pages` always holds at least one page.
        if let Some(page) = self.pages.last_mut() {
            page.push(line);
        }
    }

    fn title(&mut self, text: &str) {
        self.put(Style::Title, 0, text);
    }

    fn heading(&mut self, text: &str) {
        // Keep a heading with the first lines under it.
        if self.y - 22.0 - 4.0 * 11.0 < BOTTOM {
            self.pages.push(Vec::new());
            self.y = TOP;
        }
        self.put(Style::Heading, 0, text);
    }

    fn sub(&mut self, indent: usize, text: &str) {
        if self.y - 15.0 - 2.0 * 11.0 < BOTTOM {
            self.pages.push(Vec::new());
            self.y = TOP;
        }
        self.put(Style::Sub, indent, text);
    }

    /// Body text wrapped at word boundaries; continuation lines hang.
    fn text(&mut self, indent: usize, text: &str) {
        for para in text.split('\n') {
            let width = BODY_CHARS.saturating_sub(indent).max(20);
            for (i, l) in wrap(para, width, 2).into_iter().enumerate() {
                let extra = if i == 0 { 0 } else { 2 };
                self.put(Style::Body, indent + extra, &l);
            }
        }
    }

    fn kv(&mut self, indent: usize, label: &str, value: &str) {
        self.text(indent, &format!("{label}: {value}"));
    }

    fn time(&self, t: DateTime<Utc>) -> String {
        let utc = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match self.tz {
            Some(tz) => format!(
                "{} ({utc})",
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => utc,
        }
    }

    fn time_ms(&self, ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .map(|t| self.time(t))
            .unwrap_or_else(|| format!("{ms} ms (out of range)"))
    }
}

/// Splits a paragraph into lines of at most `width` characters; words
/// longer than a line are cut. Lines after the first are `hang` shorter.
fn wrap(para: &str, width: usize, hang: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let limit = |out: &Vec<String>| if out.is_empty() { width } else { width - hang };
    for word in para.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let cur_len = cur.chars().count();
            let sep = usize::from(cur_len > 0);
            if cur_len + sep + word.len() <= limit(&out) {
                if sep == 1 {
                    cur.push(' ');
                }
                cur.extend(word.iter());
                break;
            }
            if cur_len > 0 {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            let n = limit(&out);
            let rest = word.split_off(n.min(word.len()));
            out.push(word.into_iter().collect());
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// Text in WinAnsiEncoding (Windows-1252); anything else becomes `?`.
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\t' => b' ',
            '\u{a0}'..='\u{ff}' => c as u32 as u8,
            '€' => 0x80,
            '‚' => 0x82,
            '„' => 0x84,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            'Š' => 0x8a,
            'š' => 0x9a,
            'Ž' => 0x8e,
            'ž' => 0x9e,
            'Œ' => 0x8c,
            'œ' => 0x9c,
            'Ÿ' => 0x9f,
            _ => b'?',
        })
        .collect()
}

fn label(key: &str) -> String {
    let words: Vec<String> = key
        .split('_')
        .map(|w| match w {
            "ems" | "cpd" | "id" | "ids" => w.to_uppercase(),
            _ => w.to_string(),
        })
        .collect();
    let s = words.join(" ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// A JSON leaf of the report as text; `None` for nothing recorded.
fn json_text(l: &Layout, v: &serde_json::Value) -> Option<String> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        J::Number(n) => Some(n.to_string()),
        J::String(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map(|t| l.time(t.with_timezone(&Utc)))
                .unwrap_or_else(|_| s.clone()),
        ),
        J::Array(a) if a.is_empty() => None,
        J::Array(a) => Some(
            a.iter()
                .filter_map(|x| json_text(l, x))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        J::Object(_) => Some(v.to_string()),
    }
}

fn value_text(l: &Layout, v: &Value) -> String {
    match v {
        Value::Null => "(cleared)".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Time(ms) => l.time_ms(*ms),
        Value::List(items) => items.join(", "),
    }
}

fn hlc_time(l: &Layout, h: Hlc) -> String {
    l.time_ms(h.wall_ms as i64)
}

/// Renders the report. Same input, same bytes.
pub fn render(input: &PdfInput) -> Vec<u8> {
    let r = input.report;
    let tz: Option<Tz> = r.occurred.time_zone.as_deref().and_then(|z| z.parse().ok());
    let mut l = Layout::new(tz);
    let authors: BTreeSet<Uuid> = input.changes.iter().map(|c| c.device()).collect();
    let person = |d: &Uuid| -> String {
        input
            .devices
            .get(d)
            .map(|e| {
                format!(
                    "{}, star {}, {}",
                    e.record.person.name, e.record.person.star_number, e.record.person.unit
                )
            })
            .unwrap_or_else(|| "device not in the package".into())
    };

    l.title("Incident report: conduct of federal immigration agents");
    l.sub(0, "FieldReport evidence package");
    l.kv(0, "Report id", &r.id.to_string());
    l.kv(0, "Lifecycle", r.lifecycle.as_str());
    if let Some(t) = r.created_at {
        l.kv(0, "Created", &l.time(t));
    }
    if let Some(t) = r.updated_at {
        l.kv(0, "Last change", &l.time(t));
    }
    l.kv(
        0,
        "Incident time zone",
        match (&r.occurred.time_zone, tz) {
            (Some(z), Some(_)) => z,
            (Some(_), None) => "not a known time zone; times in UTC",
            (None, _) => "not recorded; times in UTC",
        },
    );
    l.kv(0, "Exported", &l.time(input.exported_at));
    l.kv(0, "Exporting station", input.station);
    l.kv(
        0,
        "History",
        &format!(
            "{} signed change(s) from {} device(s)",
            input.changes.len(),
            authors.len()
        ),
    );
    l.kv(0, "Kept conflicts", &r.conflicts.len().to_string());
    l.text(
        0,
        "Times are shown in the incident's time zone with UTC in brackets. Characters outside the Latin-1 set print as '?'; report.json in the package holds the exact text.",
    );

    // Scalar groups, in the order of the form.
    let value = serde_json::to_value(r).unwrap_or_default();
    l.heading("Incident");
    for key in [
        "occurred",
        "location",
        "involvement",
        "reporting_officer",
        "supervisory_federal_officer",
        "medical_aid",
        "body_camera",
    ] {
        l.sub(0, &label(key));
        let mut any = false;
        if let Some(obj) = value[key].as_object() {
            for (k, v) in obj {
                if let Some(t) = json_text(&l, v) {
                    l.kv(2, &label(k), &t);
                    any = true;
                }
            }
        }
        if !any {
            l.text(2, "(nothing recorded)");
        }
    }
    l.sub(0, "Agencies and units");
    for key in ["federal_agencies", "federal_agency_other", "cpd_units"] {
        let t = json_text(&l, &value[key]).unwrap_or_else(|| "(none recorded)".into());
        l.kv(2, &label(key), &t);
    }
    l.heading("Narrative");
    l.text(
        0,
        r.narrative.as_deref().unwrap_or("(no narrative recorded)"),
    );

    // Collections.
    for (key, title, one) in [
        ("agents", "Federal agents on scene", "Agent"),
        ("force", "Use of force", "Use of force"),
        ("injuries", "Injuries", "Injury"),
        (
            "violations",
            "Apparent violations of state or local law",
            "Violation",
        ),
        ("videos", "Video to preserve", "Video"),
        ("witnesses", "Witnesses", "Witness"),
        ("addenda", "Addenda", "Addendum"),
    ] {
        let entries = value[key].as_array().cloned().unwrap_or_default();
        l.heading(&format!("{title} ({})", entries.len()));
        if entries.is_empty() {
            l.text(0, "None recorded.");
        }
        for (i, e) in entries.iter().enumerate() {
            l.sub(0, &format!("{one} {}", i + 1));
            let Some(obj) = e.as_object() else { continue };
            l.kv(
                2,
                "Entry",
                obj.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
            );
            if obj.get("removal_conflict") == Some(&serde_json::Value::Bool(true)) {
                l.text(
                    2,
                    "Kept: removed on one device while edited on another (see conflicts).",
                );
            }
            for (k, v) in obj {
                if k == "id" || k == "removal_conflict" {
                    continue;
                }
                if let Some(t) = json_text(&l, v) {
                    l.kv(2, &label(k), &t);
                }
            }
        }
    }

    // Media, with the hashes that the signatures cover.
    l.heading(&format!("Photos and media ({})", r.media.len()));
    if r.media.is_empty() {
        l.text(0, "None attached.");
    }
    for (i, m) in r.media.iter().enumerate() {
        let f = &m.fields;
        l.sub(
            0,
            &format!(
                "Media {}: {}",
                i + 1,
                f.file_name.as_deref().unwrap_or("(no file name)")
            ),
        );
        l.kv(2, "sha256", f.sha256.as_deref().unwrap_or("(none)"));
        if let Some(s) = f.size {
            l.kv(2, "Size", &format!("{s} bytes"));
        }
        if let Some(t) = &f.mime_type {
            l.kv(2, "Type", t);
        }
        if let Some(t) = f.captured_at {
            l.kv(2, "Captured", &l.time(t));
        }
        if let (Some(a), Some(b)) = (f.latitude, f.longitude) {
            l.kv(2, "Location", &format!("{a}, {b}"));
        }
        if let Some(c) = &f.caption {
            l.kv(2, "Caption", c);
        }
        l.kv(
            2,
            "File in package",
            &format!("data/media/{}", f.sha256.as_deref().unwrap_or("?")),
        );
    }

    // Kept conflicts.
    l.heading(&format!("Kept conflicts ({})", r.conflicts.len()));
    if r.conflicts.is_empty() {
        l.text(0, "None: every field has one value.");
    }
    for c in &r.conflicts {
        l.sub(0, &c.path);
        match c.kind {
            crate::model::ConflictKind::Values => l.text(
                2,
                "Concurrent values; the first is displayed until a person resolves it:",
            ),
            crate::model::ConflictKind::RemovedWhileEdited => l.text(
                2,
                "Removed on one device while edited on another; the entry is kept.",
            ),
        }
        for v in &c.values {
            l.text(4, &format!("- {}", value_text(&l, &v.value)));
            l.text(
                6,
                &format!(
                    "by device {} ({}), change {}, clock {}, device clock {}",
                    v.device,
                    person(&v.device),
                    v.seq,
                    l.time_ms(v.clock_ms as i64),
                    l.time_ms(v.wall_clock_ms)
                ),
            );
        }
    }

    // Clocks that ran ahead of what was made after them (only when any).
    if !r.clock_ahead.is_empty() {
        l.heading(&format!("Clocks ahead ({})", r.clock_ahead.len()));
        l.text(
            0,
            "These changes carry a clock later than that of a change made after them: their device's clock was more than the allowed bound ahead. They are ordered by what came after them, not by their clock.",
        );
        for f in &r.clock_ahead {
            l.text(
                2,
                &format!(
                    "- change {} (device {}): clock {}, device clock {}; followed by change {} with clock {}",
                    f.change,
                    person(&f.change.device),
                    l.time_ms(f.clock_ms.min(i64::MAX as u64) as i64),
                    l.time_ms(f.wall_clock_ms),
                    f.followed_by,
                    l.time_ms(f.followed_clock_ms.min(i64::MAX as u64) as i64)
                ),
            );
        }
    }

    // Clocks that were never set (only when any).
    if !r.clock_unset.is_empty() {
        l.heading(&format!("Clocks not set ({})", r.clock_unset.len()));
        l.text(
            0,
            "These changes carry a clock from before 2026: their device's clock was unset or reset. Replay places each after what its author had seen, and among changes made concurrently as if made just then, not by its clock.",
        );
        for f in &r.clock_unset {
            l.text(
                2,
                &format!(
                    "- change {} (device {}): clock {}, device clock {}",
                    f.change,
                    person(&f.change.device),
                    l.time_ms(f.clock_ms.min(i64::MAX as u64) as i64),
                    l.time_ms(f.wall_clock_ms),
                ),
            );
        }
    }

    // Field history summary.
    struct Hist {
        ops: usize,
        devices: BTreeSet<Uuid>,
        first: Hlc,
        last: Hlc,
    }
    let mut hist: BTreeMap<String, Hist> = BTreeMap::new();
    for c in input.changes {
        let b = c.body();
        for op in &b.ops {
            let h = hist.entry(op.target.path()).or_insert(Hist {
                ops: 0,
                devices: BTreeSet::new(),
                first: b.hlc,
                last: b.hlc,
            });
            h.ops += 1;
            h.devices.insert(b.device);
            h.first = h.first.min(b.hlc);
            h.last = h.last.max(b.hlc);
        }
    }
    l.heading("Field history");
    l.text(
        0,
        "Every operation on every field, counted; the full history with values is in changes.jsonl.",
    );
    for (path, h) in &hist {
        let when = if h.first == h.last {
            hlc_time(&l, h.first)
        } else {
            format!("{} to {}", hlc_time(&l, h.first), hlc_time(&l, h.last))
        };
        l.text(
            0,
            &format!(
                "{path}: {} operation(s) by {} device(s), {when}",
                h.ops,
                h.devices.len()
            ),
        );
    }

    // Devices.
    l.heading(&format!("Devices in this history ({})", authors.len()));
    for d in &authors {
        l.sub(0, &format!("Device {d}"));
        let mine: Vec<&Change> = input.changes.iter().filter(|c| c.device() == *d).collect();
        let n = mine.len();
        let receipts: Vec<DateTime<Utc>> = mine
            .iter()
            .filter_map(|c| input.received.get(c.hash()).copied())
            .collect();
        match input.devices.get(d) {
            Some(e) => {
                let p = &e.record.person;
                l.kv(2, "Enrolled to", &p.name);
                l.kv(2, "Star number", &p.star_number);
                l.kv(2, "Role", p.role.as_str());
                l.kv(2, "Unit", &p.unit);
                if let Some(t) = e.enrolled_at {
                    l.kv(2, "Enrolled", &l.time(t));
                }
                if let Some(t) = e.revoked_at {
                    l.kv(2, "Revoked", &l.time(t));
                    let late = receipts.iter().filter(|r| **r >= t).count();
                    l.kv(
                        2,
                        "Received after revocation",
                        &if late == 0 {
                            "none".to_string()
                        } else {
                            format!("{late} change(s): NOT VALID (a revoked key proves nothing)")
                        },
                    );
                }
                l.kv(2, "Ed25519 public key", &hex::encode(e.record.public_key));
            }
            None => l.text(2, "Not in the package's device list."),
        }
        l.kv(2, "Changes to this report", &n.to_string());
        if let (Some(first), Some(last)) = (receipts.iter().min(), receipts.iter().max()) {
            let when = if first == last {
                l.time(*first)
            } else {
                format!("{} to {}", l.time(*first), l.time(*last))
            };
            l.kv(2, "Received by the station", &when);
        }
    }

    l.heading("How to check this document");
    l.text(
        0,
        "This PDF is a rendering. The record is the signed history in changes.jsonl beside it. `fieldreport-station verify <package>` checks every signature, every device's hash chain and every media hash, that no change reached the station at or after its device's revocation (receipts.jsonl holds the station's receipt times), replays the history, and re-renders this PDF to compare it byte for byte.",
    );

    finish(l, input)
}

fn finish(l: Layout, input: &PdfInput) -> Vec<u8> {
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let heading_font = Ref::new(3);
    let body_font = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 6;
    let n = l.pages.len();
    let page_ids: Vec<Ref> = (0..n)
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(n as i32);
    pdf.type1_font(heading_font)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(body_font)
        .base_font(Name(b"Courier"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let t = input.exported_at;
    let date = Date::new(t.year() as u16)
        .month(t.month() as u8)
        .day(t.day() as u8)
        .hour(t.hour() as u8)
        .minute(t.minute() as u8)
        .second(t.second() as u8)
        .utc_offset_hour(0)
        .utc_offset_minute(0);
    let title = format!("Incident report {}", input.report.id);
    pdf.document_info(info)
        .title(TextStr(&title))
        .producer(TextStr("FieldReport"))
        .creation_date(date);

    for (i, lines) in l.pages.iter().enumerate() {
        let page_id = page_ids[i];
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H))
            .parent(tree)
            .contents(content_id);
        page.resources()
            .fonts()
            .pair(Name(b"F1"), heading_font)
            .pair(Name(b"F2"), body_font);
        page.finish();

        let mut c = Content::new();
        let footer: String = format!(
            "Report {} - page {} of {} - exported {} by {}",
            input.report.id,
            i + 1,
            n,
            input.exported_at.format("%Y-%m-%d %H:%M UTC"),
            input.station
        )
        .chars()
        .take(FOOTER_CHARS)
        .collect();
        let footer = win_ansi(&footer);
        let footer_line = Line {
            style: Style::Footer,
            x: MARGIN,
            y: 36.0,
            text: footer,
        };
        for line in lines.iter().chain(std::iter::once(&footer_line)) {
            let (font, size, _) = line.style.metrics();
            c.begin_text();
            c.set_font(Name(font), size);
            c.next_line(line.x, line.y);
            c.show(Str(&line.text));
            c.end_text();
        }
        pdf.stream(content_id, &c.finish());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_and_cuts_long_ones() {
        let lines = wrap("aaa bbb ccc", 7, 0);
        assert_eq!(lines, vec!["aaa bbb", "ccc"]);
        let long = "x".repeat(25);
        let lines = wrap(&long, 10, 2);
        assert_eq!(lines, vec!["x".repeat(10), "x".repeat(8), "x".repeat(7)]);
        assert_eq!(wrap("", 10, 0), vec![String::new()]);
    }

    #[test]
    fn win_ansi_maps_latin1_and_replaces_the_rest() {
        assert_eq!(win_ansi("José – ok"), b"Jos\xe9 \x96 ok".to_vec());
        assert_eq!(win_ansi("中"), b"?".to_vec());
    }
}
