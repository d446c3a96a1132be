//! The daemon's memory budget: its resident size is sampled twice a second
//! against a budget (`[limits] memory_budget`; by default 80 % of the
//! memory limit of its cgroup, the systemd unit's `MemoryMax=`, or half of
//! the machine's memory without one). Above it the sessions read more
//! slowly (TCP pushes back on the clients; no client gets an error) and a
//! warning names the figures, once per episode, so a kernel OOM kill never
//! comes without a trail in the log; back under 90 % of it, an info line
//! says so. Bodies stream to the spool, so with the default limits the
//! daemon stays far below any sensible budget (`docs/benchmarks.md`,
//! "Memory"); the budget is the guard for raised limits and the unforeseen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How the budget was chosen, for the start-up log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Octets of resident memory.
    pub(crate) octets: u64,
    /// Where it comes from.
    pub(crate) source: String,
}

/// The budget: the configured one, else 80 % of the cgroup's limit, else
/// half of the machine's memory; `None` if none of them can be read.
pub(crate) fn budget(configured: Option<u64>) -> Option<Budget> {
    if let Some(octets) = configured {
        return Some(Budget {
            octets,
            source: "[limits] memory_budget".into(),
        });
    }
    if let Some(limit) = cgroup_limit() {
        return Some(Budget {
            octets: limit / 5 * 4,
            source: format!("80% of the cgroup's memory limit of {} MiB", limit >> 20),
        });
    }
    let total = meminfo_total()?;
    Some(Budget {
        octets: total / 2,
        source: format!("half of the machine's {} MiB", total >> 20),
    })
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if one is set.
fn cgroup_limit() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let file = if controllers.is_empty() {
            Path::new("/sys/fs/cgroup").join(path).join("memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.limit_in_bytes")
        } else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        // "max" (v2) or a huge number (v1): no limit.
        if let Ok(limit) = text.trim().parse::<u64>() {
            if limit < 1 << 60 {
                return Some(limit);
            }
        }
    }
    None
}

fn meminfo_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&info, "MemTotal:").map(|kib| kib * 1024)
}

/// This process's resident size in octets.
pub(crate) fn resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:").map(|kib| kib * 1024)
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Where the resident size stands against the budget, with hysteresis:
/// over at the budget, back under at 90 % of it.
pub(crate) fn over_budget(resident: u64, budget: u64, was_over: bool) -> bool {
    if was_over {
        resident > budget / 10 * 9
    } else {
        resident > budget
    }
}

/// Samples the resident size until `shutdown`, setting `pressure` while it
/// is over `budget`, with a log line at each crossing.
pub(crate) async fn watch(budget: Budget, pressure: Arc<AtomicBool>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut over = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(rss) = resident() else {
            continue;
        };
        let now_over = over_budget(rss, budget.octets, over);
        if now_over != over {
            if now_over {
                tracing::warn!(target: "submitd::memory", resident_mib = rss >> 20, budget_mib = budget.octets >> 20, "memory above its budget: sessions read more slowly until it falls");
            } else {
                tracing::info!(target: "submitd::memory", resident_mib = rss >> 20, budget_mib = budget.octets >> 20, "memory back under its budget");
            }
            over = now_over;
            pressure.store(over, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_at_the_budget_and_back_under_at_ninety_percent() {
        let mib = 1 << 20;
        assert!(!over_budget(100 * mib, 100 * mib, false));
        assert!(over_budget(101 * mib, 100 * mib, false));
        assert!(over_budget(95 * mib, 100 * mib, true), "hysteresis");
        assert!(!over_budget(89 * mib, 100 * mib, true));
    }

    #[test]
    fn this_process_has_a_size_and_a_budget() {
        assert!(resident().is_some_and(|r| r > 0));
        let chosen = budget(None).unwrap();
        assert!(chosen.octets > 0, "{chosen:?}");
        assert_eq!(budget(Some(5)).unwrap().octets, 5);
    }
}
