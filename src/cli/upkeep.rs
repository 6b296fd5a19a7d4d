//! `storeherd prune` and `storeherd report`: the store's upkeep by hand (storutil's jobs).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use chrono::Utc;

use super::*;
use crate::topology::Plan;
use crate::upkeep::prune::{Kind, PruneCounts};
use crate::upkeep::report::{report_tree, TreeReport, AGE_CLASSES};
use crate::upkeep::{self, RunRecord, SiteLock, Trigger, UpkeepError};

/// Exit status when another prune (or a shard move) holds the site lock (EX_TEMPFAIL: cron
/// wrappers read it as "try later").
pub const BUSY: u8 = 75;

fn load(t: &TopologyArgs) -> anyhow::Result<Plan> {
    Ok(Plan::load(
        t.file.as_deref(),
        t.site.as_deref(),
        &t.overrides(),
    )?)
}

/// `storeherd prune [--dry-run] [--json] [--wait]`.
pub fn prune(args: PruneArgs) -> Outcome {
    let plan = load(&args.topology)?;
    let lock = if args.wait {
        SiteLock::acquire(&plan.data)?
    } else {
        match SiteLock::acquire_now(&plan.data) {
            Ok(l) => l,
            Err(e @ UpkeepError::Busy(_)) => {
                eprintln!("storeherd: {e}: already running; try again later, or pass --wait");
                return Ok(ExitCode::from(BUSY));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let bar = folder_bar();
    let stop = AtomicBool::new(false);
    let record = upkeep::prune_site(
        &plan,
        &lock,
        Trigger::Manual,
        args.dry_run,
        &stop,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&record).context("encoding the counts")?
        );
    } else {
        print!("{}", prune_text(&record));
    }
    Ok(ExitCode::SUCCESS)
}

/// A first-level-folder bar on stderr when it is a terminal; hidden otherwise.
fn folder_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} first-level folders {elapsed_precise} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn counts_table(out: &mut String, title: &str, c: &PruneCounts) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  {:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>14}",
        "type", "examined", "removed", "rewritten", "entries", "expired", "bytes freed"
    );
    for k in Kind::ALL {
        let t = c.types.get(k.as_str()).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>14}",
            k.as_str(),
            t.examined,
            t.removed,
            t.rewritten,
            t.entries,
            t.entries_removed,
            t.bytes_freed
        );
    }
    let _ = writeln!(
        out,
        "  other files left alone: {} (no or another type), {} (a Date that is no real time)",
        c.other, c.unreadable
    );
}

fn prune_text(r: &RunRecord) -> String {
    let mut out = String::new();
    let what = if r.dry_run {
        "dry run (nothing changed)"
    } else {
        "prune"
    };
    let _ = writeln!(
        out,
        "{what} started {}, took {} ms{}",
        r.started,
        r.duration_ms,
        if r.interrupted { ", interrupted" } else { "" }
    );
    counts_table(
        &mut out,
        &format!("store {}", r.store.root),
        &r.store.counts,
    );
    for e in &r.entangled {
        counts_table(&mut out, &format!("entangled {}", e.root), &e.counts);
    }
    let t = r.total().totals();
    let _ = writeln!(
        out,
        "total: {} examined, {} removed, {} rewritten, {} bytes freed",
        t.examined, t.removed, t.rewritten, t.bytes_freed
    );
    out
}

/// `storeherd report [--format text|csv|json]`.
pub fn report(args: ReportArgs) -> Outcome {
    let plan = load(&args.topology)?;
    let now = Utc::now();
    let mut trees = vec![("store", report_tree(&plan.store, args.blocksize, now)?)];
    for e in upkeep::entangled_trees(&plan) {
        trees.push(("entangled", report_tree(&e, args.blocksize, now)?));
    }
    let out = match args.format {
        ReportFormat::Json => {
            let doc: Vec<serde_json::Value> = trees
                .iter()
                .map(|(tree, r)| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["tree"] = (*tree).into();
                    v
                })
                .collect();
            serde_json::to_string_pretty(&doc).context("encoding the report")? + "\n"
        }
        ReportFormat::Csv => report_csv(&trees),
        ReportFormat::Text => report_text(&trees, args.blocksize),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn report_text(trees: &[(&str, TreeReport)], unit: u64) -> String {
    let mut out = String::new();
    for (tree, r) in trees {
        let _ = writeln!(out, "{tree} {}", r.root);
        let _ = write!(
            out,
            "  {:<22}{:>10}{:>14}{:>14}{:>9}",
            "type", "blocks", "bytes", "disk bytes", "entries"
        );
        for a in AGE_CLASSES {
            let _ = write!(out, "{a:>9}");
        }
        out.push('\n');
        for k in Kind::ALL {
            let t = r.types.get(k.as_str()).cloned().unwrap_or_default();
            let _ = write!(
                out,
                "  {:<22}{:>10}{:>14}{:>14}{:>9}",
                k.as_str(),
                t.usage.blocks,
                t.usage.bytes,
                t.usage.disk_bytes,
                t.entries
            );
            for a in AGE_CLASSES {
                let _ = write!(out, "{:>9}", t.ages.get(a).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "  {:<22}{:>10}{:>14}{:>14}",
            "other", r.other.blocks, r.other.bytes, r.other.disk_bytes
        );
        let _ = writeln!(
            out,
            "  {:<22}{:>10}{:>14}{:>14}",
            "total", r.total.blocks, r.total.bytes, r.total.disk_bytes
        );
        let _ = writeln!(out, "  messages (recipient, hash): {}", r.messages);
        let _ = writeln!(out, "  disk bytes use {unit}-byte units");
        if !r.folders.is_empty() {
            let _ = writeln!(
                out,
                "  {:<8}{:>10}{:>14}{:>14}  shard",
                "folder", "blocks", "bytes", "disk bytes"
            );
            for f in &r.folders {
                let _ = writeln!(
                    out,
                    "  {:<8}{:>10}{:>14}{:>14}  {}",
                    f.folder,
                    f.usage.blocks,
                    f.usage.bytes,
                    f.usage.disk_bytes,
                    f.shard.as_deref().unwrap_or("local")
                );
            }
        }
    }
    out
}

/// One CSV table: `tree,section,name,blocks,bytes,disk_bytes,entries,<age classes...>`.
fn report_csv(trees: &[(&str, TreeReport)]) -> String {
    let mut out = String::from("tree,section,name,blocks,bytes,disk_bytes,entries");
    for a in AGE_CLASSES {
        let _ = write!(out, ",\"{a}\"");
    }
    out.push('\n');
    for (tree, r) in trees {
        for k in Kind::ALL {
            let t = r.types.get(k.as_str()).cloned().unwrap_or_default();
            let _ = write!(
                out,
                "{tree},type,{},{},{},{},{}",
                k.as_str(),
                t.usage.blocks,
                t.usage.bytes,
                t.usage.disk_bytes,
                t.entries
            );
            for a in AGE_CLASSES {
                let _ = write!(out, ",{}", t.ages.get(a).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        // Rows without entries or ages leave those columns empty.
        let pad = ",".repeat(AGE_CLASSES.len());
        for (name, u) in [("other", &r.other), ("total", &r.total)] {
            let _ = writeln!(
                out,
                "{tree},type,{name},{},{},{},{pad}",
                u.blocks, u.bytes, u.disk_bytes
            );
        }
        for f in &r.folders {
            let _ = writeln!(
                out,
                "{tree},folder,{},{},{},{},{pad}",
                f.folder, f.usage.blocks, f.usage.bytes, f.usage.disk_bytes
            );
        }
    }
    out
}
