//! What the station derives from the reports for oversight: the 30-day
//! internal review lists for supervisors, and the public record of counts
//! by month and district.
//!
//! The public counts carry nothing but numbers: no names, badges,
//! narrative, exact times or places; only the month (in Chicago time) and
//! the police district. Any count from 1 to 4 is suppressed so a small
//! number cannot point at a person.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::America::Chicago;
use fieldreport_core::model::LifecycleState;
use fieldreport_core::Report;
use serde::Serialize;

/// Counts from 1 up to this are shown as suppressed.
pub const SUPPRESS_BELOW: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Not reviewed, due date ahead (or the incident time not given yet).
    Due,
    Overdue,
    Done,
    /// Done after its due date.
    DoneLate,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReviewItem {
    pub report_id: uuid::Uuid,
    pub lifecycle: LifecycleState,
    pub due: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub status: ReviewStatus,
}

pub fn review_status(r: &Report, now: DateTime<Utc>) -> ReviewStatus {
    match (r.review.completed_at, r.review.due) {
        (Some(done), Some(due)) if done > due => ReviewStatus::DoneLate,
        (Some(_), _) => ReviewStatus::Done,
        (None, Some(due)) if now > due => ReviewStatus::Overdue,
        (None, _) => ReviewStatus::Due,
    }
}

/// Every report the supervisor sees, with its review status; drafts are
/// not yet the supervisor's to review. Overdue first, then by due date.
pub fn reviews(reports: &[Report], now: DateTime<Utc>) -> Vec<ReviewItem> {
    let mut out: Vec<ReviewItem> = reports
        .iter()
        .filter(|r| r.lifecycle != LifecycleState::Draft)
        .map(|r| ReviewItem {
            report_id: r.id,
            lifecycle: r.lifecycle,
            due: r.review.due,
            completed_at: r.review.completed_at,
            status: review_status(r, now),
        })
        .collect();
    let rank = |s: ReviewStatus| match s {
        ReviewStatus::Overdue => 0,
        ReviewStatus::Due => 1,
        ReviewStatus::DoneLate => 2,
        ReviewStatus::Done => 3,
    };
    out.sort_by_key(|i| (rank(i.status), i.due, i.report_id));
    out
}

/// The measures of the public record, in the order they are published.
pub const MEASURES: &[&str] = &[
    "reports",
    "illegal_force_allegations",
    "force_physical",
    "force_takedown",
    "force_chemical_agent",
    "force_impact_weapon",
    "force_electronic_weapon",
    "force_firearm_pointed",
    "force_firearm_discharged",
    "force_vehicle",
    "force_other",
    "injuries_none_visible",
    "injuries_minor",
    "injuries_moderate",
    "injuries_serious_bodily_injury",
    "injuries_death",
    "ems_summoned",
    "referrals",
    "reviews_done",
    "reviews_on_time",
];

/// measure → count.
pub type Row = BTreeMap<&'static str, u64>;
/// (month `YYYY-MM`, district) → its row.
pub type Counts = BTreeMap<(String, String), Row>;

/// Counts over submitted (and later) reports; drafts are not yet reports.
pub fn public_counts(reports: &[Report]) -> Counts {
    let mut out: Counts = BTreeMap::new();
    for r in reports
        .iter()
        .filter(|r| r.lifecycle != LifecycleState::Draft)
    {
        let month = r
            .occurred
            .start
            .or(r.created_at)
            .map(|t| {
                let local = t.with_timezone(&Chicago);
                format!("{:04}-{:02}", local.year(), local.month())
            })
            .unwrap_or_else(|| "unknown".into());
        let district = r
            .location
            .district
            .as_deref()
            .map(district_label)
            .unwrap_or_else(|| "unknown".into());
        let row = out
            .entry((month, district))
            .or_insert_with(|| MEASURES.iter().map(|m| (*m, 0)).collect());
        let mut add = |m: &str, n: u64| {
            if let Some(v) = MEASURES
                .iter()
                .find(|x| **x == m)
                .and_then(|k| row.get_mut(k))
            {
                *v += n;
            }
        };
        add("reports", 1);
        if r.involvement.illegal_force_alleged == Some(true) {
            add("illegal_force_allegations", 1);
        }
        for f in &r.force {
            if let Some(t) = f.fields.force_type {
                add(&format!("force_{}", t.as_str()), 1);
            }
        }
        for i in &r.injuries {
            if let Some(sev) = i.fields.severity {
                add(&format!("injuries_{}", sev.as_str()), 1);
            }
        }
        if r.medical_aid.ems_summoned_at.is_some() {
            add("ems_summoned", 1);
        }
        if r.referral.date.is_some() {
            add("referrals", 1);
        }
        if let Some(done) = r.review.completed_at {
            add("reviews_done", 1);
            if r.review.due.is_none_or(|due| done <= due) {
                add("reviews_on_time", 1);
            }
        }
    }
    out
}

/// A district as published: digits only (CPD districts are numbered), so a
/// free-text field can never leak into the public record.
fn district_label(d: &str) -> String {
    let digits: String = d.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || digits.len() > 3 {
        "unknown".into()
    } else {
        format!("{:0>3}", digits.trim_start_matches('0'))
    }
}

/// A count as published: 0, 5 and up as is; 1–4 suppressed.
pub fn published(n: u64) -> String {
    if n > 0 && n < SUPPRESS_BELOW {
        "suppressed".into()
    } else {
        n.to_string()
    }
}

/// CSV: `month,district,measure,count`, one row per cell.
pub fn counts_csv(c: &Counts) -> String {
    let mut out = String::from("month,district,measure,count\n");
    for ((month, district), row) in c {
        for m in MEASURES {
            out.push_str(&format!(
                "{month},{district},{m},{}\n",
                published(row.get(m).copied().unwrap_or(0))
            ));
        }
    }
    out
}

/// One month of the public page: districts as columns, a row a measure.
struct PublicMonth {
    name: String,
    districts: Vec<String>,
    rows: Vec<PublicRow>,
}

struct PublicRow {
    measure: String,
    cells: Vec<String>,
}

/// The public page (`templates/public.html`; askama escapes every value).
#[derive(askama::Template)]
#[template(path = "public.html")]
struct PublicPage {
    months: Vec<PublicMonth>,
    /// The transparency log's newest checkpoint and its verifier key.
    log: Option<(String, String)>,
}

/// The public page's stylesheet, served as a file (no inline style).
pub const PUBLIC_CSS: &str = include_str!("../templates/public.css");

/// The public page: one table per month, newest first, districts as
/// columns; then the log's newest checkpoint and key (`log`), so anyone can
/// keep a copy and later ask for a consistency proof.
pub fn counts_html(c: &Counts, log: Option<(String, String)>) -> crate::error::Result<String> {
    let mut months: BTreeMap<&str, Vec<(&str, &Row)>> = BTreeMap::new();
    for ((month, district), row) in c {
        months.entry(month).or_default().push((district, row));
    }
    let months = months
        .iter()
        .rev()
        .map(|(month, districts)| PublicMonth {
            name: month.to_string(),
            districts: districts.iter().map(|(d, _)| d.to_string()).collect(),
            rows: MEASURES
                .iter()
                .map(|m| PublicRow {
                    measure: m.replace('_', " "),
                    cells: districts
                        .iter()
                        .map(|(_, row)| published(row.get(m).copied().unwrap_or(0)))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    askama::Template::render(&PublicPage { months, log })
        .map_err(|_| crate::error::StationError::Internal("public page".into()))
}
