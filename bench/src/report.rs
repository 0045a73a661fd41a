//! One row of the figures table: the project's figure, the baseline's from
//! the same run, their ratio, the goal and whether it is met.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub ours: String,
    /// The baseline's figure from the same run, or `—` where the goal is absolute.
    pub baseline: String,
    /// ours / baseline, where there is a baseline.
    pub ratio: Option<f64>,
    pub goal: String,
    /// `None`: not measured in this build (see `ours`).
    pub met: Option<bool>,
}

impl Row {
    /// A figure against a baseline; the goal is a maximum ratio.
    pub fn ratio(scenario: String, ours: String, baseline: String, ratio: f64, max: f64) -> Row {
        let goal = if max < 1.0 {
            "faster than the baseline".to_string()
        } else {
            format!("≤ {max}×")
        };
        Row {
            scenario,
            ours,
            baseline,
            ratio: Some(ratio),
            goal,
            met: Some(if max < 1.0 { ratio < 1.0 } else { ratio <= max }),
        }
    }

    /// An absolute figure against an absolute goal.
    pub fn absolute(scenario: String, ours: String, goal: &str, met: bool) -> Row {
        Row {
            scenario,
            ours,
            baseline: "—".into(),
            ratio: None,
            goal: goal.into(),
            met: Some(met),
        }
    }

    /// A scenario whose part has not landed yet.
    pub fn pending(scenario: &str, why: &str, goal: &str) -> Row {
        Row {
            scenario: scenario.into(),
            ours: format!("not measured: {why}"),
            baseline: "—".into(),
            ratio: None,
            goal: goal.into(),
            met: None,
        }
    }
}

pub fn print_table(rows: &[Row]) {
    println!("\n| scenario | FieldReport | baseline (same run) | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}×")).unwrap_or("—".into());
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {ratio} | {} | {met} |",
            r.scenario, r.ours, r.baseline, r.goal
        );
    }
}

impl Row {
    /// Replaces the goal with an absolute one (the ratio stays for context).
    pub fn with_goal(mut self, goal: &str, met: bool) -> Row {
        self.goal = goal.into();
        self.met = Some(met);
        self
    }
}
