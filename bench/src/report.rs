//! The bench's result: one JSON object (every figure, each stack figure over the floor's,
//! and the targets met or not) and a short table for people.

use std::fmt::Write;

use serde::Serialize;

use super::cpu::CpuShare;
use super::cycles::CycleResult;
use super::measure::LoopResult;
use super::scale::ScaleRun;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub namespace: String,
    /// Whether the bench itself was built with optimisations (figures need `--release`).
    pub release_build: bool,
    pub cpus: usize,
    pub setup: Setup,
    pub floor: Phase,
    pub stack: Phase,
    pub cycles: Vec<CycleResult>,
    pub assigner: AssignerFigures,
    pub scale: Option<Scale>,
    pub ratios: Ratios,
    pub targets: Vec<Target>,
}

/// How the stack ran, so figures are read for what they are.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub assigner: &'static str,
    pub workers: &'static str,
    pub store: &'static str,
    pub floor: &'static str,
    pub phase_secs: f64,
    pub cycle_secs: f64,
}

/// Latency at 1 and 16 clients.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub one_client: LoopResult,
    pub sixteen_clients: LoopResult,
    /// CPU per operation of each process over the 16-client loop.
    pub sixteen_clients_cpu: Vec<CpuShare>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssignerFigures {
    pub idle_rss_mib: f64,
    pub idle_rss_after_load_mib: f64,
    /// From spawning a new assigner (the old one killed with SIGKILL) to `/readyz` 200.
    pub restart_ready_ms: Vec<f64>,
    /// From the same spawn to the first slot acquired through it.
    pub restart_first_acquire_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub base: ScaleRun,
    pub large: ScaleRun,
}

/// Stack figures over the floor's (latency: lower is better; rates: higher is better).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    pub acquire_p50_1c: f64,
    pub acquire_p90_1c: f64,
    pub acquire_p99_1c: f64,
    pub acquire_p50_16c: f64,
    pub acquire_p90_16c: f64,
    pub acquire_p99_16c: f64,
    /// Acquire-plus-release cycles per second at 16 clients over floor requests per second
    /// at 16 clients.
    pub acquire_release_rate_16c: f64,
    /// Full cycles per second over floor requests per second at 16 clients, per pool size.
    pub full_cycles: Vec<(usize, f64)>,
    /// Acquire p50 with the large fake pool over the small fake pool's.
    pub scale_acquire_p50: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
    pub met: bool,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

impl Report {
    /// Fills in `ratios` and `targets` from the figures.
    pub(crate) fn judge(&mut self) {
        let (f1, f16) = (&self.floor.one_client, &self.floor.sixteen_clients);
        let (s1, s16) = (&self.stack.one_client, &self.stack.sixteen_clients);
        self.ratios = Ratios {
            acquire_p50_1c: ratio(s1.latency.p50_ms, f1.latency.p50_ms),
            acquire_p90_1c: ratio(s1.latency.p90_ms, f1.latency.p90_ms),
            acquire_p99_1c: ratio(s1.latency.p99_ms, f1.latency.p99_ms),
            acquire_p50_16c: ratio(s16.latency.p50_ms, f16.latency.p50_ms),
            acquire_p90_16c: ratio(s16.latency.p90_ms, f16.latency.p90_ms),
            acquire_p99_16c: ratio(s16.latency.p99_ms, f16.latency.p99_ms),
            acquire_release_rate_16c: ratio(s16.per_sec, f16.per_sec),
            full_cycles: self
                .cycles
                .iter()
                .map(|c| (c.slots, ratio(c.per_sec, f16.per_sec)))
                .collect(),
            scale_acquire_p50: self.scale.as_ref().map(|s| {
                ratio(
                    s.large.acquire.latency.p50_ms,
                    s.base.acquire.latency.p50_ms,
                )
            }),
        };
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let mut targets = vec![
            Target::at_most(
                "acquire p50 / floor p50, 1 client",
                self.ratios.acquire_p50_1c,
                1.5,
                "x",
            ),
            Target::at_most("acquire p99, 1 client", s1.latency.p99_ms, 5.0, "ms"),
            Target::at_least(
                "acquire+release per s / floor per s, 16 clients",
                self.ratios.acquire_release_rate_16c,
                0.3,
                "x",
            ),
            Target::at_most("assigner idle RSS", self.assigner.idle_rss_mib, 32.0, "MiB"),
            Target::at_most(
                "assigner idle RSS after load",
                self.assigner.idle_rss_after_load_mib,
                32.0,
                "MiB",
            ),
            Target::at_most(
                "killed assigner ready again (worst)",
                max(&self.assigner.restart_ready_ms),
                1000.0,
                "ms",
            ),
        ];
        if let Some(scale) = &self.scale {
            targets.push(Target::at_most(
                "scale: worker process RSS",
                scale.large.rss_mib.max(scale.large.peak_rss_mib),
                512.0,
                "MiB",
            ));
            targets.push(Target::at_most(
                "scale: acquire p50 / small-pool p50",
                self.ratios.scale_acquire_p50.unwrap_or(f64::NAN),
                1.2,
                "x",
            ));
        }
        self.targets = targets;
    }

    /// A short table of the figures and targets.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, r: &LoopResult| {
            let _ = writeln!(
                out,
                "{name:<34} {:>8.2} {:>8.2} {:>8.2} {:>9.1} {:>6}",
                r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.per_sec, r.errors
            );
        };
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>8} {:>8} {:>9} {:>6}",
            "latency (ms) / rate", "p50", "p90", "p99", "per s", "errors"
        );
        row(&mut out, "floor, 1 client", &self.floor.one_client);
        row(&mut out, "floor, 16 clients", &self.floor.sixteen_clients);
        row(
            &mut out,
            "acquire (+release), 1 client",
            &self.stack.one_client,
        );
        row(
            &mut out,
            "acquire (+release), 16 clients",
            &self.stack.sixteen_clients,
        );
        if let Some(scale) = &self.scale {
            row(
                &mut out,
                &format!("fake, {} slots, acquire", scale.base.slots),
                &scale.base.acquire,
            );
            row(
                &mut out,
                &format!("fake, {} slots, acquire", scale.large.slots),
                &scale.large.acquire,
            );
        }
        for (name, phase) in [("floor", &self.floor), ("acquire+release", &self.stack)] {
            let shares: Vec<String> = phase
                .sixteen_clients_cpu
                .iter()
                .map(|c| format!("{} {:.3}", c.process, c.ms_per_op))
                .collect();
            let total: f64 = phase.sixteen_clients_cpu.iter().map(|c| c.ms_per_op).sum();
            let _ = writeln!(
                out,
                "CPU ms per op, {name}, 16 clients: {total:.3} ({})",
                shares.join(", ")
            );
        }
        for c in &self.cycles {
            let _ = writeln!(
                out,
                "full cycles, {} slots, {} clients: {:.1}/s ({} cleaned of {} released, {} errors)",
                c.slots, c.clients, c.per_sec, c.cleaned, c.released, c.errors
            );
        }
        if let Some(scale) = &self.scale {
            for run in [&scale.base, &scale.large] {
                let _ = writeln!(
                    out,
                    "fake worker, {} slots: all consuming after {:.0} ms, RSS {:.1} MiB (peak {:.1})",
                    run.slots, run.all_consuming_ms, run.rss_mib, run.peak_rss_mib
                );
            }
        }
        let _ = writeln!(
            out,
            "\n{:<50} {:>10} {:>10}  met",
            "target", "value", "limit"
        );
        for t in &self.targets {
            let _ = writeln!(
                out,
                "{:<50} {:>8.2}{:<2} {:>8.2}{:<2}  {}",
                t.name,
                t.value,
                t.unit,
                t.limit,
                t.unit,
                if t.met { "yes" } else { "NO" }
            );
        }
        out
    }
}

impl Target {
    fn at_most(name: &'static str, value: f64, limit: f64, unit: &'static str) -> Target {
        Target {
            name,
            value,
            limit,
            unit,
            met: value <= limit,
        }
    }
    fn at_least(name: &'static str, value: f64, limit: f64, unit: &'static str) -> Target {
        Target {
            name,
            value,
            limit,
            unit,
            met: value >= limit,
        }
    }
}
