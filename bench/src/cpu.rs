//! Where the CPU goes: user plus system time of each process of the stack over a phase,
//! per operation, read from Linux `/proc/<pid>/stat`. Coarse (clock ticks of 10 ms) but,
//! over a phase of seconds, enough to tell which process a gap comes from.

use std::collections::BTreeMap;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux x86-64).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU milliseconds one process spent per operation.
#[derive(Debug, Clone, Serialize)]
pub struct CpuShare {
    pub process: String,
    pub ms_per_op: f64,
}

/// Processes to watch, by name, and the CPU ticks they spent while the meter ran. It may
/// run in several stretches ([`CpuMeter::resume`], [`CpuMeter::pause`]).
pub(crate) struct CpuMeter {
    pids: Vec<(String, u32)>,
    spent: BTreeMap<String, u64>,
    since: Option<BTreeMap<String, u64>>,
}

impl CpuMeter {
    /// A paused meter of `pids`, this process (`bench` and what runs in it) and every
    /// RabbitMQ node of this machine (`broker`).
    pub(crate) fn new(pids: &[(&str, u32)]) -> CpuMeter {
        let mut all: Vec<(String, u32)> = pids.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect();
        all.push(("bench (+fake Launchpad)".to_owned(), std::process::id()));
        all.extend(broker_pids().into_iter().map(|p| ("broker".to_owned(), p)));
        CpuMeter {
            pids: all,
            spent: BTreeMap::new(),
            since: None,
        }
    }

    pub(crate) fn resume(&mut self) {
        self.since = Some(ticks(&self.pids));
    }

    pub(crate) fn pause(&mut self) {
        if let Some(since) = self.since.take() {
            for (process, t) in ticks(&self.pids) {
                let before = since.get(&process).copied().unwrap_or(0);
                *self.spent.entry(process).or_insert(0) += t.saturating_sub(before);
            }
        }
    }

    /// CPU per operation of each watched process while the meter ran, for `ops` operations.
    pub(crate) fn per_op(&mut self, ops: usize) -> Vec<CpuShare> {
        self.pause();
        let ops = ops.max(1) as f64;
        self.spent
            .iter()
            .map(|(process, &t)| CpuShare {
                process: process.clone(),
                ms_per_op: t as f64 / TICKS_PER_SEC * 1000.0 / ops,
            })
            .collect()
    }
}

/// User plus system ticks of each named group of processes.
fn ticks(pids: &[(String, u32)]) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for (name, pid) in pids {
        *sums.entry(name.clone()).or_insert(0) += process_ticks(*pid).unwrap_or(0);
    }
    sums
}

/// utime + stime of `pid` (all its threads).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), i.e. 12 and 13 after pid, comm and state are skipped.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The Erlang VMs on this machine (RabbitMQ's `beam.smp`).
fn broker_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let mut meter = CpuMeter::new(&[]);
        meter.resume();
        // Burn CPU so that several ticks pass: a fixed amount of work (some 50 ms of CPU
        // optimised, more in a debug build), not of wall time, which a loaded machine would
        // spend elsewhere.
        let mut x = 0u64;
        for _ in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        std::hint::black_box(x);
        let shares = meter.per_op(1);
        let bench = shares
            .iter()
            .find(|s| s.process.starts_with("bench"))
            .expect("this process");
        assert!(bench.ms_per_op >= 10.0, "{shares:?}");
    }
}
