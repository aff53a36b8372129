//! Human output: the `status` and `plan` tables. JSON output is the
//! [`Report`] serialised as it is.

use std::fmt::Write;

use crate::pass::{Report, VmReport};
use crate::policy::{Action, Reason};
use crate::units::Kib;

/// A name fit for one table cell: control characters escaped, the rest kept.
pub fn cell(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn ago(now: u64, then: Option<u64>) -> String {
    match then {
        None => "-".into(),
        Some(t) => format!("{} ({}s ago)", utc(t), now.saturating_sub(t)),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, v) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(v);
            } else {
                line.push_str(v);
                line.extend(std::iter::repeat(' ').take(widths[c] - v.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status line of what KSM's scanning costs and what it buys.
fn ksm_cost_line(c: &crate::ksmcost::KsmCost) -> String {
    let lent = format!(
        "lent {} of the savings {}",
        Kib(c.lent_kib),
        Kib(c.savings_kib)
    );
    let (Some(total), None) = (c.ksmd_cpu_secs, &c.problem) else {
        return format!(
            "KSM cost: unknown ({}); {lent}",
            c.problem.as_deref().unwrap_or("ksmd not read")
        );
    };
    let Some((pct, dt)) = c.ksmd_cpu_percent.zip(c.interval_secs) else {
        return format!(
            "KSM cost: ksmd {total:.1} s of CPU since boot (a rate from the next pass on); {lent}"
        );
    };
    let mut line = format!("KSM cost: ksmd {pct:.1}% of a core over the last {dt} s");
    if let Some(p) = c.pages_scanned_per_sec {
        let _ = write!(line, ", {p:.0} pages/s scanned");
    }
    if let Some(n) = c.full_scans {
        let _ = write!(line, ", {n} full scan{}", if n == 1 { "" } else { "s" });
    }
    let _ = write!(line, "; {lent}");
    if let (Some(s), Some(l)) = (c.savings_mib_per_cpu_sec, c.lent_mib_per_cpu_sec) {
        let _ = write!(
            line,
            "; per ksmd CPU-second each second: {s:.0} MiB saved, {l:.0} MiB lent"
        );
    }
    line
}

/// The status line of the KSM governor (`--ksm`): what it did with KSM's
/// knobs this pass, and why.
fn ksm_governor_line(g: &crate::governor::Decision) -> String {
    use crate::governor::{Action, Mode};
    let knobs = g.found.as_ref().map_or(String::new(), |f| {
        format!(
            " (run {}, pages_to_scan {}, sleep_millisecs {}{})",
            f.knobs.run,
            f.knobs.pages_to_scan,
            f.knobs.sleep_millisecs,
            if f.advisor { ", advisor scan-time" } else { "" }
        )
    });
    match (g.mode, g.action, &g.stepped_back) {
        (Mode::Observe, Action::Observe, _) => format!("ksm: observe{knobs}"),
        (Mode::Manage, Action::StepBack | Action::SteppedBack, Some(s)) => format!(
            "ksm: manage, stepped back since {}: {} is {}, ksm-balloon left it at {}; nothing written until --ksm observe (one pass) and manage again",
            utc(s.since),
            s.knob,
            s.found,
            s.wrote
        ),
        _ => {
            let writes: Vec<String> = g
                .writes
                .iter()
                .map(|w| match &w.error {
                    None => format!("{} {} -> {}", w.knob, w.from, w.to),
                    Some(e) => format!("{} {} -> {} FAILED: {e}", w.knob, w.from, w.to),
                })
                .collect();
            let writes = if writes.is_empty() {
                String::new()
            } else {
                format!("; {}", writes.join(", "))
            };
            format!(
                "ksm: {}{knobs}, budget {}% of a core: {}{writes}",
                g.mode, g.max_cpu_percent, g.reason
            )
        }
    }
}

fn header(r: &Report) -> String {
    let mut out = String::new();
    let k = &r.ksm;
    let _ = writeln!(
        out,
        "KSM: {} (run={}), savings {} by '{}' (pages_sharing {}, pages_shared {}, general_profit {}), full scans {}",
        if k.merging() {
            "merging"
        } else if k.unmerged() {
            "unmerged everything"
        } else {
            "NOT merging"
        },
        k.run,
        Kib(r.savings_kib),
        r.metric,
        k.pages_sharing,
        k.pages_shared,
        k.general_profit.map_or("n/a".to_string(), |b| format!("{b} B")),
        k.full_scans
    );
    let _ =
        writeln!(
        out,
        "Pool: {} (share {}), handed out {} ({} split); host MemAvailable {} of {}, reserve {}{}",
        Kib(r.pool_kib),
        r.policy.share,
        Kib(r.budget_kib),
        r.policy.split,
        Kib(r.host.available_kib),
        Kib(r.host.total_kib),
        Kib(r.reserve_kib),
        if r.under_reserve { " -- UNDER RESERVE" } else { "" }
    );
    let _ = writeln!(out, "{}", ksm_cost_line(&r.ksm_cost));
    let _ = writeln!(out, "{}", ksm_governor_line(&r.ksm_governor));
    if r.lendable_kib != r.savings_kib {
        let _ = writeln!(
            out,
            "Lent from: {} (what held over the last {} s{})",
            Kib(r.lendable_kib),
            r.policy_window_secs,
            if r.attribution.is_some() {
                ", the VMs' part"
            } else {
                ""
            }
        );
    }
    if let Some(a) = &r.attribution {
        let _ = writeln!(
            out,
            "Whose savings: VMs {}, other processes and unaccounted pages {} (only the VMs' part is lent)",
            Kib(a.vms_kib.max(0) as u64),
            Kib(a.non_vm_kib.max(0) as u64),
        );
    }
    if let Some(p) = &r.attribution_problem {
        let _ = writeln!(
            out,
            "Whose savings: unknown ({p}); the pool is split equally"
        );
    }
    if r.under_reserve || r.kept_kib > 0 || r.squeezed_kib > 0 {
        let _ = writeln!(
            out,
            "Loans: VMs keep {} the savings no longer cover; {}",
            Kib(r.kept_kib),
            if r.under_reserve {
                format!(
                    "host {} under its reserve: bonuses shrink by {}, {} of it from applications' memory",
                    Kib(r.shortfall_kib),
                    Kib(r.recalled_kib),
                    Kib(r.squeezed_kib)
                )
            } else {
                "the host is above its reserve, so they keep it".into()
            }
        );
    }
    if let Some(p) = &r.state_problem {
        let _ = writeln!(out, "State file problem: {p}");
    }
    out
}

/// What `status` says about one VM beyond its figures.
fn note(r: &Report, v: &VmReport) -> String {
    let mut parts: Vec<String> = Vec::new();
    match v.action {
        Action::Skip => parts.push(v.reason.to_string()),
        Action::Grow | Action::Shrink => {
            parts.push(format!("next pass: {:?} ({})", v.action, v.reason).to_lowercase())
        }
        Action::Hold => {
            if matches!(v.reason, Reason::Backoff | Reason::InFlight) {
                parts.push(v.reason.to_string());
            }
        }
    }
    if v.adopted {
        parts.push("not yet recorded: the next pass adopts it".into());
    }
    if let Some(p) = v.pending_kib {
        parts.push(format!("on its way to {}", Kib(p)));
    }
    if v.kept_kib > 0 {
        parts.push(format!(
            "keeps {} its applications hold (the savings no longer cover it)",
            Kib(v.kept_kib)
        ));
    }
    if v.squeezed_kib > 0 {
        parts.push(format!(
            "squeezed {} into its applications' memory (host under its reserve)",
            Kib(v.squeezed_kib)
        ));
    }
    if let Some(st) = v.stuck {
        parts.push(format!(
            "balloon stays at {} since {}; asked again {}",
            Kib(st.at_kib),
            utc(st.since),
            if st.retry_at > r.at {
                format!("in {}s", st.retry_at - r.at)
            } else {
                "at the next pass".into()
            }
        ));
    }
    if let (Some(k), Some(share)) = (v.ksm, v.contribution_share) {
        parts.push(format!(
            "saved {} ({:.0}% of the VMs'; {} merging pages)",
            Kib(k.attributed_kib.max(0) as u64),
            share * 100.0,
            k.merging_pages
        ));
    }
    if let Some(why) = &v.unresponsive {
        parts.push(match v.unresponsive_since {
            Some(t) => format!("not answering since {}: {why}", utc(t)),
            None => format!("not answering: {why}"),
        });
    }
    if let Some(p) = &v.ksm_problem {
        parts.push(format!("own KSM figures unknown: {p}"));
    }
    if let Some(d) = v.demand {
        if v.demand_basis == Some(crate::pass::rows::DemandBasis::Held) {
            parts.push(format!(
                "demand {:.1} ({})",
                d as f64 / 1000.0,
                crate::pass::rows::DemandBasis::Held.why()
            ));
        } else if d > 0 {
            parts.push(format!(
                "reads {:.1} MiB/s with its memory full",
                d as f64 / 1000.0
            ));
        }
    }
    if let Some(b) = v.demand_basis.filter(|b| !b.known()) {
        parts.push(format!(
            "demand unknown ({}): weighs as an idle VM",
            b.why()
        ));
    }
    if v.managed && v.action != Action::Skip && !v.guest_stats_fresh {
        parts.push("no fresh guest statistics".into());
    }
    if v.reason == crate::policy::Reason::Awaiting {
        if let Some(age) = v.figures_age_secs {
            parts.push(format!("its figures are {age} s old"));
        }
    }
    parts.join("; ")
}

/// The `status` table.
pub fn status(r: &Report) -> String {
    let mut out = header(r);
    if r.vms.is_empty() {
        out.push_str("No active VMs.\n");
        return out;
    }
    let mut rows = vec![[
        "VM",
        "FLOOR",
        "TARGET",
        "CURRENT",
        "CEILING",
        "SHARE",
        "KEPT",
        "OOM-DEFLATE",
        "LAST CHANGE",
        "NOTE",
    ]
    .map(String::from)
    .to_vec()];
    for v in &r.vms {
        rows.push(vec![
            cell(&v.name),
            Kib(v.floor_kib).to_string(),
            Kib(v.target_kib).to_string(),
            Kib(v.current_kib).to_string(),
            Kib(v.ceiling_kib).to_string(),
            format!("{:.1}%", v.share_of_pool * 100.0),
            if v.kept_kib > 0 {
                Kib(v.kept_kib).to_string()
            } else {
                "-".into()
            },
            match v.autodeflate {
                Some(true) => "on".into(),
                Some(false) => "off".into(),
                None => "-".into(),
            },
            ago(r.at, v.last_change_at),
            note(r, v),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// The `plan` table.
pub fn plan(r: &Report) -> String {
    let mut out = header(r);
    if r.vms.is_empty() {
        out.push_str("No active VMs: nothing to do.\n");
        return out;
    }
    let mut rows = vec![[
        "VM", "ACTION", "CURRENT", "TARGET", "FLOOR", "CEILING", "WHY",
    ]
    .map(String::from)
    .to_vec()];
    for v in &r.vms {
        let action = match v.action {
            Action::Grow => "grow",
            Action::Shrink => "shrink",
            Action::Hold => "hold",
            Action::Skip => "skip",
        };
        let why = if v.adopted {
            format!("{} (adopted: no hook recorded it)", v.reason)
        } else {
            v.reason.to_string()
        };
        rows.push(vec![
            cell(&v.name),
            action.into(),
            Kib(v.current_kib).to_string(),
            Kib(v.target_kib).to_string(),
            Kib(v.floor_kib).to_string(),
            Kib(v.ceiling_kib).to_string(),
            why,
        ]);
    }
    out.push_str(&table(&rows));
    let n = r
        .vms
        .iter()
        .filter(|v| matches!(v.action, Action::Grow | Action::Shrink))
        .count();
    let _ = writeln!(out, "{n} resize call(s) would be made.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_690_027), "2026-11-26 10:47:07");
    }

    #[test]
    fn cells_escape_control_characters_only() {
        assert_eq!(cell("web 01"), "web 01");
        assert_eq!(cell("ünï\"cödé"), "ünï\"cödé");
        assert_eq!(cell("a\nb"), "a\\nb");
    }

    #[test]
    fn tables_align_on_characters() {
        let t = table(&[vec!["ä".into(), "x".into()], vec!["abc".into(), "y".into()]]);
        assert_eq!(t, "ä    x\nabc  y\n");
    }
}
