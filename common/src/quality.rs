//! Sums of the data-quality figures refine records in each silver commit
//! (`smelter.quality` in `commitInfo`): what `GET /tables/{name}/quality` and
//! `smelter quality` answer. One implementation for both, over the JSON as recorded, so
//! the two never disagree.

use serde_json::{Value, json};

/// The counts summed over commits.
const COUNTS: [&str; 4] = ["rows_in", "rows_out", "dropped", "deduplicated"];
/// The per-rule counts summed over commits.
const PER_RULE: [&str; 2] = ["quarantined", "warned"];

/// Figures of commits, in the order added, and their sums.
#[derive(Debug)]
pub struct QualitySummary {
    totals: Value,
    commits: Vec<Value>,
    /// The table checks of the latest commit that evaluated them, and its version.
    checks: Option<(i64, Value)>,
}

impl Default for QualitySummary {
    fn default() -> Self {
        Self {
            totals: json!({
                "rows_in": 0, "rows_out": 0, "dropped": 0, "deduplicated": 0,
                "quarantined": {}, "warned": {}, "columns": {},
            }),
            commits: Vec::new(),
            checks: None,
        }
    }
}

fn add(total: &mut Value, value: &Value) {
    let sum = total.as_u64().unwrap_or(0) + value.as_u64().unwrap_or(0);
    *total = sum.into();
}

impl QualitySummary {
    /// Adds the figures `quality` of table version `version`, committed at `at_ms`.
    pub fn add(&mut self, version: i64, at_ms: Option<i64>, quality: Value) {
        for key in COUNTS {
            add(&mut self.totals[key], &quality[key]);
        }
        for kind in PER_RULE {
            if let Some(rules) = quality[kind].as_object() {
                for (rule, n) in rules {
                    add(&mut self.totals[kind][rule], n);
                }
            }
        }
        if let Some(columns) = quality["columns"].as_object() {
            for (column, figures) in columns {
                let total = &mut self.totals["columns"][column];
                add(&mut total["rows"], &figures["rows"]);
                add(&mut total["nulls"], &figures["nulls"]);
                let (rows, nulls) = (total["rows"].as_u64(), total["nulls"].as_u64());
                if let (Some(rows), Some(nulls)) = (rows, nulls)
                    && rows > 0
                {
                    total["null_fraction"] = (nulls as f64 / rows as f64).into();
                }
            }
        }
        if let Some(checks) = quality.get("checks").filter(|c| c.is_array()) {
            self.checks = Some((version, checks.clone()));
        }
        self.commits.push(json!({
            "version": version,
            "at_ms": at_ms,
            "quality": quality,
        }));
    }

    /// `{"totals": {...}, "commits": [...], "checks": {"version": v, "outcomes": [...]}}`
    /// (`checks` null when no commit evaluated table checks).
    pub fn into_json(self) -> Value {
        let checks = self
            .checks
            .map(|(version, outcomes)| json!({ "version": version, "outcomes": outcomes }));
        json!({ "totals": self.totals, "commits": self.commits, "checks": checks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rules_and_column_nulls_add_up() {
        let mut summary = QualitySummary::default();
        summary.add(
            3,
            Some(10),
            json!({"rows_in": 10, "rows_out": 7, "dropped": 1, "deduplicated": 1,
                   "quarantined": {"has_user": 1}, "warned": {},
                   "columns": {"user_id": {"rows": 7, "nulls": 0, "min": "a", "max": "b"}}}),
        );
        summary.add(
            4,
            None,
            json!({"rows_in": 5, "rows_out": 3, "dropped": 0, "deduplicated": 0,
                   "quarantined": {"has_user": 1, "_parse": 1}, "warned": {"late": 2},
                   "columns": {"user_id": {"rows": 3, "nulls": 2}}}),
        );
        let out = summary.into_json();
        let totals = &out["totals"];
        assert_eq!(totals["rows_in"], 15);
        assert_eq!(totals["rows_out"], 10);
        assert_eq!(totals["quarantined"], json!({"has_user": 2, "_parse": 1}));
        assert_eq!(totals["warned"], json!({"late": 2}));
        assert_eq!(
            totals["columns"]["user_id"],
            json!({"rows": 10, "nulls": 2, "null_fraction": 0.2})
        );
        assert_eq!(out["commits"].as_array().unwrap().len(), 2);
        assert_eq!(out["commits"][1]["version"], 4);
        assert!(out["checks"].is_null());

        let mut summary = QualitySummary::default();
        let failing = json!([{"check": "unique(id)", "ok": false, "violations": 2}]);
        summary.add(5, None, json!({"rows_out": 1, "checks": failing}));
        summary.add(6, None, json!({"rows_out": 0}));
        let out = summary.into_json();
        assert_eq!(out["checks"], json!({"version": 5, "outcomes": failing}));
    }
}
