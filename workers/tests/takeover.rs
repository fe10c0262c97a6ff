//! Heartbeats: a slot lock holder that is paused (SIGSTOP) loses its lock within about two AMQP
//! heartbeats, and its standby takes the slot over (its lock epoch in the record). Real
//! `berth-worker` processes, the real broker, the fake Launchpad in process.
//!
//! The figures in the README come from the ignored test, at the default heartbeat:
//! `cargo test --release -p berth-worker --test takeover -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use berth::record::SlotState;
use common::launchpad::World;

/// Pauses the lock holders of `slots` slots at once (each slot has its own holder and
/// standby process) and answers how long each standby took to take its slot over.
async fn takeovers(slots: usize, heartbeat: Option<u16>) -> Vec<Duration> {
    let world = World::start(slots).await;
    let url = match heartbeat {
        Some(secs) => {
            let url = common::amqp_url();
            let joint = if url.contains('?') { '&' } else { '?' };
            format!("{url}{joint}heartbeat={secs}")
        }
        // The config file's `heartbeat_secs`, the default.
        None => world.config.broker_url(),
    };
    let env = [("BERTH_AMQP_URL", url.as_str())];
    let names: Vec<String> = (1..=slots).map(|i| format!("ppa-{i}")).collect();
    let mut holders = Vec::new();
    let mut standbys = Vec::new();
    for name in &names {
        let holder = world.worker(&format!("{name}-holder"), &[name], &env);
        holder.wait_log("took the slot over").await;
        holders.push(holder);
    }
    for name in &names {
        let standby = world.worker(&format!("{name}-standby"), &[name], &env);
        standby.wait_log("standing by").await;
        standbys.push(standby);
    }
    for name in &names {
        world.wait_state(name, SlotState::Free).await;
    }
    let mut epochs = Vec::new();
    for name in &names {
        epochs.push(world.slot(name).await.record.epoch);
    }

    for holder in &holders {
        holder.signal("STOP");
    }
    let paused = Instant::now();
    let mut taken: Vec<Option<Duration>> = vec![None; slots];
    let limit = Duration::from_secs(60);
    while taken.iter().any(Option::is_none) && paused.elapsed() < limit {
        for (i, name) in names.iter().enumerate() {
            if taken[i].is_none() && world.slot(name).await.record.epoch > epochs[i] {
                taken[i] = Some(paused.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for holder in &holders {
        holder.signal("CONT");
    }
    // Each paused holder wakes up, learns it lost the lock and stands by; nothing is written
    // in its epoch after the takeover (the store's view stays the standby's).
    for (i, holder) in holders.iter().enumerate() {
        holder.wait_log("lost the broker").await;
        let record = world.slot(&names[i]).await.record;
        assert!(record.epoch > epochs[i], "{}: {record:?}", names[i]);
    }
    let figures: Vec<Duration> = taken
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                panic!(
                    "{} was not taken over within {limit:?}; standby log:\n{}",
                    names[i],
                    standbys[i].logs()
                )
            })
        })
        .collect();
    for mut worker in holders.into_iter().chain(standbys) {
        let _ = worker.terminate().await;
    }
    world.finish().await;
    figures
}

/// With a 1 s heartbeat, a paused holder's standby has the slot within a few seconds.
#[tokio::test]
async fn a_paused_lock_holder_loses_its_slot_to_its_standby() {
    let figures = takeovers(2, Some(1)).await;
    for took in &figures {
        // Two heartbeats, the broker's check interval, and a standby retry (1 s).
        assert!(*took < Duration::from_secs(6), "takeover took {took:?}");
    }
    eprintln!("takeovers at a 1 s heartbeat: {figures:?}");
}

/// The README's figures: ten holders paused at once at the default heartbeat (10 s).
#[tokio::test]
#[ignore = "a measurement, about a minute: run it with --ignored --nocapture"]
async fn takeover_time_at_the_default_heartbeat() {
    let mut figures = takeovers(10, None).await;
    figures.sort();
    let median = (figures[4] + figures[5]) / 2;
    println!(
        "takeover after SIGSTOP of the holder, heartbeat {} s, {} tries: median {:.1} s, worst {:.1} s (all: {:?})",
        berth::broker::DEFAULT_HEARTBEAT_SECS,
        figures.len(),
        median.as_secs_f64(),
        figures.last().unwrap().as_secs_f64(),
        figures
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    let bound = Duration::from_secs(3 * u64::from(berth::broker::DEFAULT_HEARTBEAT_SECS) + 2);
    assert!(*figures.last().unwrap() < bound, "{figures:?}");
}
