//! The chaos test (DESIGN §7): the real processes — an assigner, one worker process per slot
//! (and a standby worker process for the first few slots), the fake Launchpad and a private
//! RabbitMQ node behind a TCP proxy — under many concurrent clients, while a fault schedule
//! kills processes, pauses the worker that holds a slot lock (SIGSTOP, often while it
//! cleans, sometimes cut off from the broker as by a network split so that it wakes up still
//! believing it holds the lock), restarts the broker, cuts and stalls connections, makes
//! the store fail, and acts as an operator (a few actions in a row, DESIGN §2 "Operator
//! actions"): disable (drain, or `now`), enable, reclaim and clean, on slots they fit (a held
//! one to reclaim or disable at once, a dirty one to clean, a disabled one to enable) and now
//! and then on any (to be refused). At most two slots are disabled at once; when the schedule
//! ends every slot a disable may have reached is enabled (a pending drain cancelled), again
//! while quiescing until its worker has applied it. A checker counts violations of invariants
//! 1–5, and of fencing: no deletion may reach a slot while a client holds it.
//!
//! A revoked lease (reclaim, disable with `now`) stops being valid at the write that revoked
//! it (DESIGN §7): the checker finds, in the fake Launchpad's write history, the write that
//! took the slot from `used` with that lease to `dirty`; a hold that outlived it (the client
//! learns only from its next renew or release, `409`) or got a refusal counts as revoked
//! only if a reclaim or disable-now request for that slot was sent before that write (one
//! request per revoked hold). Its hold then ends at that write, for invariant 1 and for
//! fencing (the cleaning after it deletes under nobody; a deletion or a second holder before
//! it is still a violation), and its `409`s after it are none. Any other `403`/`409` to a
//! holder is a violation. A worker that revoked without going through `dirty` (wrote `free`)
//! makes it fail: the hold is not ended, the next holder overlaps it, the cleaning deletes
//! under it, the holder's release is refused.
//!
//! The assigner runs with API tokens (`[auth] mode = "tokens"`, DESIGN §4 "Clients and roles"):
//! the clients use two client names in turn, the operator actions an operator token, and the
//! store records `<client>/<owner>` (`public_owner = "plain"`), which invariant 2 checks.
//!
//! On a cluster (`invariants_hold_on_a_cluster`): a private three-node RabbitMQ cluster with
//! quorum queues, every process given the three nodes (through a proxy each) as its broker
//! list, and on top of the faults above: nodes killed (half of the time the one leading the
//! pool queue) and started again, and nodes paused (SIGSTOP) for longer than two heartbeats.
//! One node at most is down at a time. Besides the checker's violations it reports the
//! availability: the longest time without an acquire answered with a slot, overall and
//! while a node was down or paused.
//!
//! `cargo test --release --test chaos -- --nocapture`; `BERTH_CHAOS_SECS=600` for a long run.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::fake::{FakeConfig, FakeLaunchpad, Faults};
use berth::record::{SlotState, parse_description};
use berth_testkit::rabbit::{PrivateBroker, PrivateCluster};
use chrono::{DateTime, Utc};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use support::proxy::Proxy;

const SLOTS: usize = 6;
/// The first `STANDBYS` slots have a second worker process standing by for the lock.
const STANDBYS: usize = 3;
/// The AMQP heartbeat of every process: a paused lock holder loses its lock after about two.
const HEARTBEAT_SECS: u64 = 2;
const CLIENTS: usize = 12;
const POOL: &str = "ppa";
/// The assigner checks API tokens (`[auth] mode = "tokens"`): the clients take turns with
/// two client names (so that renews and releases meet the check of which client holds a
/// slot), the operator actions and reads go with an operator token.
const CLIENT_NAMES: [&str; 2] = ["ci-a", "ci-b"];
const CLIENT_TOKENS: [&str; 2] = ["chaos-ci-a-token-0123456789", "chaos-ci-b-token-0123456789"];
const OPERATOR_TOKEN: &str = "chaos-operator-token-0123456789";

/// An HTTP client that sends `token` with every request.
fn http_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The owner the store records for a client's `owner` (`public_owner = "plain"`):
/// `<client>/<owner>`, the client by the id in `client-<id>-<round>`.
fn recorded_owner(owner: &str) -> String {
    let id: usize = owner
        .split('-')
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    format!("{}/{owner}", CLIENT_NAMES[id % CLIENT_NAMES.len()])
}

fn chaos_secs() -> u64 {
    std::env::var("BERTH_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One process's way to the broker: a proxy to each node, in the order of its broker list.
struct Route(Vec<Proxy>);

impl Route {
    /// Proxies to `nodes`, listed from the `first`-th on (so that processes spread over the
    /// nodes of a cluster).
    async fn start(nodes: &[SocketAddr], first: usize) -> Route {
        let mut proxies = Vec::new();
        for k in 0..nodes.len() {
            proxies.push(Proxy::start(nodes[(first + k) % nodes.len()]).await);
        }
        Route(proxies)
    }

    /// The broker list (`BERTH_AMQP_URL`).
    fn url(&self) -> String {
        self.0
            .iter()
            .map(|p| format!("amqp://guest:guest@{}/%2f", p.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cut(&self) {
        self.0.iter().for_each(Proxy::cut);
    }

    fn sever(&self) {
        self.0.iter().for_each(Proxy::sever);
    }

    fn stall(&self) {
        self.0.iter().for_each(Proxy::stall);
    }

    fn resume(&self) {
        self.0.iter().for_each(Proxy::resume);
    }
}

/// The broker: one node, or a cluster of three.
enum Broker {
    Node(PrivateBroker),
    Cluster(PrivateCluster),
}

impl Broker {
    fn addrs(&self) -> Vec<SocketAddr> {
        let port = |b: &PrivateBroker| SocketAddr::from(([127, 0, 0, 1], b.port));
        match self {
            Broker::Node(node) => vec![port(node)],
            Broker::Cluster(cluster) => cluster.nodes.iter().map(port).collect(),
        }
    }
}

/// A child process that is killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str], env: &[(&str, String)], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, …).
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything the test runs, and how to start each part again.
struct Stack {
    dir: PathBuf,
    config: PathBuf,
    assigner: Option<Proc>,
    workers: Vec<Option<Proc>>,
    standbys: Vec<Option<Proc>>,
    /// The own broker route of each worker process of a slot with a standby (the slot's
    /// holder at `i`, its standby at `STANDBYS + i`), to cut one of them off alone; every
    /// other process goes through the shared route.
    own_proxies: Vec<Route>,
}

impl Stack {
    fn start_assigner(&mut self) {
        let config = self.config.to_str().unwrap().to_owned();
        let log = self.dir.join("assigner.log");
        self.assigner = Some(Proc::spawn(
            &bin("berth"),
            &["assigner", "--config", &config],
            &[],
            &log,
        ));
    }

    fn start_worker(&mut self, i: usize) {
        let proxy = (i < STANDBYS).then_some(i);
        self.workers[i] = Some(self.spawn_worker(i, "", proxy));
    }

    fn start_standby(&mut self, i: usize) {
        self.standbys[i] = Some(self.spawn_worker(i, "-standby", Some(STANDBYS + i)));
    }

    fn spawn_worker(&self, i: usize, suffix: &str, proxy: Option<usize>) -> Proc {
        let config = self.config.to_str().unwrap().to_owned();
        let slot = format!("ppa-{}", i + 1);
        let log = self.worker_log(i, suffix);
        let env: Vec<(&str, String)> = proxy
            .map(|p| ("BERTH_AMQP_URL", self.own_proxies[p].url()))
            .into_iter()
            .collect();
        Proc::spawn(
            &bin("berth-worker"),
            &["--config", &config, "--slot", &slot],
            &env,
            &log,
        )
    }

    fn worker_log(&self, i: usize, suffix: &str) -> PathBuf {
        self.dir.join(format!("worker-ppa-{}{suffix}.log", i + 1))
    }

    /// The worker process of slot `i` that holds its lock, by what their logs said last (the
    /// one whose latest lock line is a takeover), with its own proxy.
    fn lock_holder(&self, i: usize) -> Option<(&Proc, &Route)> {
        let holds = |suffix: &str| {
            let log = std::fs::read_to_string(self.worker_log(i, suffix)).unwrap_or_default();
            let took = log.rfind("took the slot over");
            let lost = ["standing by", "lost the broker", "fenced", "starting slots"]
                .iter()
                .filter_map(|line| log.rfind(line))
                .max();
            took.is_some() && took > lost
        };
        if holds("") {
            self.workers[i].as_ref().map(|p| (p, &self.own_proxies[i]))
        } else if holds("-standby") {
            self.standbys[i]
                .as_ref()
                .map(|p| (p, &self.own_proxies[STANDBYS + i]))
        } else {
            None
        }
    }
}

/// One acquisition as a client saw it.
#[derive(Debug, Clone)]
struct Held {
    owner: String,
    slot: String,
    token_sha256: String,
    from: Instant,
    /// When the client stopped using the slot (its first release attempt, or its lease's
    /// end); the checker ends it earlier at the write that revoked the lease, if one did.
    until: Instant,
    /// `403`/`409` answers its holder got where a `202` was due: a violation unless an
    /// operator revoked the lease before the answer (the checker decides, from the store).
    refusals: Vec<Refusal>,
    /// When the store's write history says an operator revoked the lease (set by the checker).
    revoked: Option<Instant>,
}

/// A refusal a holder got, and when.
#[derive(Debug, Clone)]
struct Refusal {
    what: String,
    answered: Instant,
}

#[derive(Debug, Default)]
struct Tally {
    acquires: u64,
    no_slot: u64,
    unavailable: u64,
    interrupted: u64,
    gave_up: u64,
    releases: u64,
    ambiguous_releases: u64,
    wrong_token_refused: u64,
    never_released: u64,
    renews: u64,
    renews_refused: u64,
    held: Vec<Held>,
    /// Deletions repeated under a holder of publications already deleted before its hold
    /// (see `check_deletions`).
    repeated_deletions: u64,
    violations: Vec<String>,
    last_success: Option<Instant>,
    /// When each acquire was answered with a slot, for the availability.
    successes: Vec<Instant>,
}

type Shared = Arc<Mutex<Tally>>;

async fn client_loop(
    id: usize,
    url: String,
    store_root: String,
    tally: Shared,
    stop: Instant,
    seed: u64,
) {
    let http = http_with(CLIENT_TOKENS[id % CLIENT_TOKENS.len()]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut round = 0u64;
    while Instant::now() < stop {
        round += 1;
        let owner = format!("client-{id}-{round}");
        let wait_secs: u64 = rng.random_range(1..=4);
        let lease_secs: u64 = rng.random_range(2..=5);
        let behaviour: f64 = rng.random();
        let give_up = behaviour < 0.08;
        let started = Instant::now();
        let request = http
            .post(format!("{url}/v1/pools/{POOL}/acquire"))
            .json(&json!({"owner": owner, "wait_secs": wait_secs, "lease_secs": lease_secs}))
            .timeout(Duration::from_secs(wait_secs + 8))
            .send();
        let response = if give_up {
            let patience = Duration::from_millis(rng.random_range(50..(wait_secs * 1000)));
            match tokio::time::timeout(patience, request).await {
                Ok(r) => r,
                Err(_) => {
                    tally.lock().unwrap().gave_up += 1;
                    continue;
                }
            }
        } else {
            request.await
        };
        let response = match response {
            Ok(r) => r,
            Err(err) if err.is_timeout() => {
                tally.lock().unwrap().violations.push(format!(
                    "inv4: acquire by {owner} unanswered {:?} after it was sent",
                    started.elapsed()
                ));
                continue;
            }
            Err(_) => {
                // The assigner was killed under this request; the client sees the cut.
                tally.lock().unwrap().interrupted += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200 => {}
            503 => {
                {
                    let mut t = tally.lock().unwrap();
                    if body["error"] == "no_slot" {
                        t.no_slot += 1;
                    } else {
                        t.unavailable += 1;
                    }
                }
                if retry_after.is_none() {
                    tally.lock().unwrap().violations.push(format!(
                        "inv4: a 503 to {owner} without Retry-After: {body}"
                    ));
                }
                // A CI client honours Retry-After; a short pause keeps the load realistic.
                let pause = retry_after.unwrap_or(1).min(1) * rng.random_range(100..500);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            other => {
                tally
                    .lock()
                    .unwrap()
                    .violations
                    .push(format!("inv4: acquire by {owner} answered {other} {body}"));
                continue;
            }
        }
        let got = Instant::now();
        let slot = body["slot"].as_str().unwrap_or_default().to_owned();
        let token = body["lease_token"].as_str().unwrap_or_default().to_owned();
        let expires = parse_time(&body["lease_expires"]);
        let mut until = instant_of(expires);
        {
            let mut t = tally.lock().unwrap();
            t.acquires += 1;
            t.last_success = Some(got);
            t.successes.push(got);
        }
        let token_sha256 = berth::lease::token_hash(&token);
        // Use the slot: upload a package, which cleaning must delete before the next holder.
        let _ = http
            .post(format!("{store_root}_fake/ppas/{slot}/uploads"))
            .json(&json!({"package": format!("pkg-{id}"), "version": format!("{round}.0")}))
            .send()
            .await;
        let roll: f64 = rng.random();
        if roll < 0.1 {
            // Never released: the lease must bring it back.
            let mut t = tally.lock().unwrap();
            t.never_released += 1;
            t.held.push(Held {
                owner,
                slot,
                token_sha256,
                from: got,
                until,
                refusals: Vec::new(),
                revoked: None,
            });
            continue;
        }
        let mut refusals = Vec::new();
        if roll < 0.2 {
            let wrong = berth::lease::new_token();
            let r = post(
                &http,
                &format!("{url}/v1/slots/{slot}/release"),
                json!({"lease_token": wrong}),
            )
            .await;
            if let Some((code, _)) = r {
                if code == 403 {
                    tally.lock().unwrap().wrong_token_refused += 1;
                } else if code == 409 {
                    // `not_held`: right only if an operator revoked the lease meanwhile.
                    refusals.push(Refusal {
                        what: format!("a wrong token's release of {slot} answered 409"),
                        answered: Instant::now(),
                    });
                } else if code != 503 {
                    tally.lock().unwrap().violations.push(format!(
                        "inv1: a wrong token's release of {slot} answered {code}"
                    ));
                }
            }
        }
        let hold = Duration::from_millis(rng.random_range(0..(lease_secs * 1000 / 2)));
        tokio::time::sleep(hold).await;
        if rng.random::<f64>() < 0.3 {
            let r = post(
                &http,
                &format!("{url}/v1/slots/{slot}/renew"),
                json!({"lease_token": token, "lease_secs": lease_secs}),
            )
            .await;
            match r {
                Some((200, body)) => {
                    until = until.max(instant_of(parse_time(&body["lease_expires"])));
                    tally.lock().unwrap().renews += 1;
                }
                // The lease was revoked (or a bug): the release below says it again, and the
                // checker decides from the store's history.
                Some((409, _)) => tally.lock().unwrap().renews_refused += 1,
                _ => {}
            }
        }
        // Release, retrying a little while the broker or assigner is away; if it never
        // goes through, the lease brings the slot back.
        // The client stops using the slot when it first asks to release it. An attempt that
        // got no answer (the assigner killed under it, the broker gone) may still have gone
        // through, so a later `403`/`409` is no violation then: the slot was given back.
        let mut released_at = None;
        let mut first_sent = None;
        for _ in 0..5 {
            if Instant::now() + Duration::from_millis(300) >= until {
                break;
            }
            let sent = Instant::now();
            let first = *first_sent.get_or_insert(sent);
            match post(
                &http,
                &format!("{url}/v1/slots/{slot}/release"),
                json!({"lease_token": token}),
            )
            .await
            {
                Some((202, _)) => {
                    released_at = Some(first);
                    break;
                }
                Some((403 | 409, _)) if first < sent => {
                    tally.lock().unwrap().ambiguous_releases += 1;
                    released_at = Some(first);
                    break;
                }
                Some((code @ (403 | 409), body)) => {
                    // A violation unless an operator revoked the lease before this answer:
                    // the checker tells which from the store's write history.
                    refusals.push(Refusal {
                        what: format!(
                            "release of {slot} by its holder {owner} answered {code} {body} before its lease ended"
                        ),
                        answered: Instant::now(),
                    });
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        let mut t = tally.lock().unwrap();
        if released_at.is_some() {
            t.releases += 1;
        }
        let released_at = released_at.or(first_sent);
        let until = released_at.map_or(until, |r| r.min(until));
        t.held.push(Held {
            owner,
            slot,
            token_sha256,
            from: got,
            until,
            refusals,
            revoked: None,
        });
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Option<(u16, Value)> {
    let r = http
        .post(url)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.json().await.unwrap_or(Value::Null)))
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(Utc::now)
}

/// The monotonic instant of a wall-clock time (same machine, same clock).
fn instant_of(t: DateTime<Utc>) -> Instant {
    let delta = t - Utc::now();
    match delta.to_std() {
        Ok(ahead) => Instant::now() + ahead,
        Err(_) => Instant::now() - (-delta).to_std().unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    KillAssigner,
    BrokerRestart,
    CutConnections,
    StallConnections,
    Store5xx,
    StoreSlow,
    Store412,
    StallWorker,
    /// An operator action: disable (drain or `now`), enable, reclaim or clean.
    Operator,
    /// On a cluster: a node killed (half of the time the pool queue's leader), then started.
    KillNode,
    /// On a cluster: a node paused (SIGSTOP) for longer than two heartbeats, then resumed.
    PauseNode,
}

const FAULTS: [Fault; 10] = [
    Fault::KillWorker,
    Fault::KillAssigner,
    Fault::BrokerRestart,
    Fault::CutConnections,
    Fault::StallConnections,
    Fault::Store5xx,
    Fault::StoreSlow,
    Fault::Store412,
    Fault::StallWorker,
    Fault::Operator,
];

/// The faults a cluster run adds to [`FAULTS`] (where a broker restart is a node's, graceful):
/// nodes are killed and paused too.
const CLUSTER_ONLY_FAULTS: [Fault; 2] = [Fault::KillNode, Fault::PauseNode];

/// At most this many slots are disabled (or draining) at once: the clients keep a pool.
const MAX_DISABLED: usize = 2;

/// One operator action the fault schedule sent, and how the assigner answered it.
#[derive(Debug, Clone)]
struct OpRequest {
    slot: String,
    /// `disable`, `disable_now`, `enable`, `reclaim` or `clean`.
    kind: &'static str,
    sent: DateTime<Utc>,
    /// `None`: no answer (the assigner killed under it, a cut): it may have gone through.
    code: Option<u16>,
}

impl OpRequest {
    /// Whether it may have revoked a lease: a reclaim or a disable with `now` that the
    /// assigner did not refuse (a refused action is never handed to the worker).
    fn may_revoke(&self) -> bool {
        matches!(self.kind, "reclaim" | "disable_now")
            && !matches!(self.code, Some(400 | 404 | 409))
    }
}

/// The slots as `GET /v1/slots` shows them: name → (state, draining, held for how long).
async fn slot_states(
    http: &reqwest::Client,
    url: &str,
) -> Option<Vec<(String, String, bool, Option<chrono::Duration>)>> {
    let r = http
        .get(format!("{url}/v1/slots"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body: Value = r.json().await.ok()?;
    let slots = body["slots"].as_array()?;
    Some(
        slots
            .iter()
            .map(|s| {
                let held = s["held_since"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| Utc::now() - t.with_timezone(&Utc));
                (
                    s["slot"].as_str().unwrap_or_default().to_owned(),
                    s["state"].as_str().unwrap_or_default().to_owned(),
                    s["draining"].as_bool().unwrap_or(false),
                    held,
                )
            })
            .collect(),
    )
}

/// Sends one operator action and records it.
async fn operator_request(
    http: &reqwest::Client,
    url: &str,
    slot: &str,
    kind: &'static str,
    ops: &mut Vec<OpRequest>,
) -> Option<u16> {
    let (action, body) = match kind {
        "disable" => ("disable", json!({"reason": "chaos: drain"})),
        "disable_now" => ("disable", json!({"reason": "chaos: now", "now": true})),
        "enable" => ("enable", json!({"reason": "chaos"})),
        "reclaim" => ("reclaim", json!({"reason": "chaos"})),
        _ => ("clean", json!({})),
    };
    let sent = Utc::now();
    let code = post(http, &format!("{url}/v1/slots/{slot}/{action}"), body)
        .await
        .map(|(code, _)| code);
    ops.push(OpRequest {
        slot: slot.to_owned(),
        kind,
        sent,
        code,
    });
    code
}

/// The operator fault: one action at random on a slot it fits (a held one to reclaim or
/// disable at once, a dirty one to clean, a disabled one to enable), now and then on any slot
/// (to be refused). `disabled` is the set of slots a disable may have reached.
async fn operator_fault(
    http: &reqwest::Client,
    url: &str,
    rng: &mut rand::rngs::StdRng,
    disabled: &mut std::collections::BTreeSet<String>,
    ops: &mut Vec<OpRequest>,
) {
    let states = slot_states(http, url).await.unwrap_or_default();
    let kind = if !disabled.is_empty() && (disabled.len() >= MAX_DISABLED || rng.random_bool(0.3)) {
        "enable"
    } else {
        let r: f64 = rng.random();
        if r < 0.35 {
            "reclaim"
        } else if r < 0.55 {
            "disable_now"
        } else if r < 0.8 {
            "disable"
        } else {
            "clean"
        }
    };
    // A held slot whose holder has had a moment to upload (its upload after a revocation
    // would outlive the cleaning: the store cannot fence a client).
    let fits = |name: &str, state: &str, held: Option<chrono::Duration>| match kind {
        "enable" => disabled.contains(name),
        "reclaim" | "disable_now" => {
            state == "used"
                && held.is_some_and(|h| h > chrono::Duration::milliseconds(500))
                && (kind == "reclaim" || !disabled.contains(name))
        }
        "disable" => !disabled.contains(name),
        _ => state == "dirty",
    };
    let candidates: Vec<&String> = states
        .iter()
        .filter(|(name, state, _, held)| fits(name, state, *held))
        .map(|(name, ..)| name)
        .collect();
    let slot = if !candidates.is_empty() && rng.random_bool(0.9) {
        candidates[rng.random_range(0..candidates.len())].clone()
    } else if kind == "enable" {
        disabled.iter().next().cloned().unwrap()
    } else if kind == "clean" || kind == "reclaim" {
        // Refused (`409`) unless the slot changed meanwhile: harmless either way.
        format!("ppa-{}", rng.random_range(1..=SLOTS))
    } else {
        return;
    };
    if kind.starts_with("disable") && disabled.len() >= MAX_DISABLED {
        return;
    }
    let code = operator_request(http, url, &slot, kind, ops).await;
    match (kind, code) {
        // An unanswered disable may have gone through; a `409` says it is disabled already.
        ("disable" | "disable_now", Some(202 | 409) | None) => {
            disabled.insert(slot);
        }
        ("enable", Some(202)) => {
            disabled.remove(&slot);
        }
        _ => {}
    }
}

/// Enables every slot that a disable may have reached (and any slot shown disabled or
/// draining), so that all come back free.
async fn enable_all(
    http: &reqwest::Client,
    url: &str,
    disabled: &mut std::collections::BTreeSet<String>,
    ops: &mut Vec<OpRequest>,
) {
    if let Some(states) = slot_states(http, url).await {
        for (name, state, draining, _) in states {
            if state == "disabled" || draining {
                disabled.insert(name);
            }
        }
    }
    for slot in std::mem::take(disabled) {
        if operator_request(http, url, &slot, "enable", ops).await != Some(202) {
            // Not applied yet (its worker down, the broker away): tried again while quiescing.
            disabled.insert(slot);
        }
    }
}

/// The two chaos runs take turns: each loads the machine on its own, and their timings
/// (heartbeats, pauses) are what they test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_faults() {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_on_a_cluster() {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos(true).await;
}

/// The longest time between two acquires answered with a slot, among `successes` (sorted
/// here) from `start` to `end`, and the longest of those that overlap one of `windows`.
fn longest_gaps(
    successes: &mut [Instant],
    start: Instant,
    end: Instant,
    windows: &[(Instant, Instant)],
) -> (Duration, Duration) {
    successes.sort_unstable();
    let mut points = vec![start];
    points.extend(
        successes
            .iter()
            .copied()
            .filter(|t| *t >= start && *t <= end),
    );
    points.push(end);
    let (mut overall, mut in_faults) = (Duration::ZERO, Duration::ZERO);
    for pair in points.windows(2) {
        let gap = pair[1] - pair[0];
        overall = overall.max(gap);
        if windows.iter().any(|(a, b)| pair[0] < *b && *a < pair[1]) {
            in_faults = in_faults.max(gap);
        }
    }
    (overall, in_faults)
}

async fn chaos(on_cluster: bool) {
    let seed: u64 = std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("chaos: seed={seed} (BERTH_CHAOS_SEED to replay the schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut broker = tokio::task::spawn_blocking(move || {
        if on_cluster {
            Broker::Cluster(PrivateCluster::start(3))
        } else {
            Broker::Node(PrivateBroker::start())
        }
    })
    .await
    .unwrap();
    let nodes = broker.addrs();
    let proxy = Route::start(&nodes, 0).await;
    let fake = FakeLaunchpad::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeConfig {
            ppas: SLOTS,
            // Long enough that a cleaning is often under way when its worker is paused.
            deletion_delay: Duration::from_millis(300),
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();

    let dir = std::env::temp_dir().join(format!("berth-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let credentials = dir.join("launchpad.credentials");
    berth::secret_file::write_secret_file(
        &credentials,
        "[1]\nconsumer_key = berth-chaos\nconsumer_secret =\naccess_token = chaos-token\naccess_secret = chaos-secret\n",
    )
    .unwrap();
    let port = free_port();
    let slots: Vec<String> = (1..=SLOTS).map(|i| format!("\"ppa-{i}\"")).collect();
    let config = dir.join("berth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
amqp_url = "{proxy}"
queue_type = "{queue_type}"
heartbeat_secs = {HEARTBEAT_SECS}
namespace = "chaos"
listen = "127.0.0.1:{port}"
min_lease_secs = 1
default_lease_secs = 5
default_wait_secs = 5
max_wait_secs = 10

[auth]
mode = "tokens"
public_owner = "plain"
[[auth.clients]]
name = "{ci_a}"
token_sha256 = "{ci_a_sha}"
role = "client"
[[auth.clients]]
name = "{ci_b}"
token_sha256 = "{ci_b_sha}"
role = "client"
[[auth.clients]]
name = "ops"
token_sha256 = "{ops_sha}"
role = "operator"

[store]
api_root = "{api_root}"
owner = "berth-ci"
credentials_file = "{credentials}"
timeout_secs = 2

[worker]
lease_grace_secs = 0
clean_poll_millis = 50
backoff_min_millis = 50
backoff_max_millis = 1000

[[pools]]
name = "{POOL}"
slots = [{slots}]
"#,
            proxy = proxy.url(),
            queue_type = if on_cluster { "quorum" } else { "classic" },
            api_root = fake.api_root(),
            credentials = credentials.display(),
            slots = slots.join(", "),
            ci_a = CLIENT_NAMES[0],
            ci_b = CLIENT_NAMES[1],
            ci_a_sha = berth::access::api_token_hash(CLIENT_TOKENS[0]),
            ci_b_sha = berth::access::api_token_hash(CLIENT_TOKENS[1]),
            ops_sha = berth::access::api_token_hash(OPERATOR_TOKEN),
        ),
    )
    .unwrap();

    let url = format!("http://127.0.0.1:{port}");
    let mut stack = Stack {
        dir: dir.clone(),
        config,
        assigner: None,
        workers: vec![],
        standbys: vec![],
        own_proxies: Vec::new(),
    };
    for i in 0..2 * STANDBYS {
        stack.own_proxies.push(Route::start(&nodes, i + 1).await);
    }
    stack.workers.resize_with(SLOTS, || None);
    stack.standbys.resize_with(STANDBYS, || None);
    for i in 0..SLOTS {
        stack.start_worker(i);
    }
    for i in 0..STANDBYS {
        stack.start_standby(i);
    }
    stack.start_assigner();
    let http = http_with(OPERATOR_TOKEN);
    wait_for("every slot free at start", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), url.clone());
        async move { free_slots(&http, &url).await == Some(SLOTS) }
    })
    .await;

    let tally: Shared = Arc::default();
    let run = Duration::from_secs(chaos_secs());
    let stop = Instant::now() + run;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client_loop(
                i,
                url.clone(),
                fake.api_root(),
                tally.clone(),
                stop,
                seed ^ (i as u64 + 1),
            ))
        })
        .collect();

    // The fault schedule.
    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    let mut stalls = 0u32;
    let mut max_recovery = Duration::ZERO;
    let mut faults_of_run = FAULTS.to_vec();
    if on_cluster {
        faults_of_run.extend(CLUSTER_ONLY_FAULTS);
    }
    let mut kinds = faults_of_run.clone();
    // When a node was down or paused, for the availability.
    let mut node_faults: Vec<(&str, Instant, Instant)> = Vec::new();
    let run_start = Instant::now();
    let mut disabled = std::collections::BTreeSet::new();
    let mut ops: Vec<OpRequest> = Vec::new();
    while Instant::now() + Duration::from_secs(4) < stop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        if kinds.is_empty() {
            kinds = faults_of_run.clone();
        }
        let fault = kinds.swap_remove(rng.random_range(0..kinds.len()));
        *injected.entry(format!("{fault:?}")).or_default() += 1;
        match fault {
            Fault::KillWorker => {
                let i = rng.random_range(0..SLOTS);
                let standby = i < STANDBYS && rng.random_bool(0.5);
                let victim = if standby {
                    &mut stack.standbys[i]
                } else {
                    &mut stack.workers[i]
                };
                if let Some(mut w) = victim.take() {
                    w.kill();
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
                if standby {
                    stack.start_standby(i);
                } else {
                    stack.start_worker(i);
                }
            }
            Fault::StallWorker => {
                // Pause the lock holder of a slot that has a standby, half of the time while
                // it cleans, for longer than two heartbeats: the standby takes the slot over,
                // and the paused one must touch nothing when it wakes.
                let i = rng.random_range(0..STANDBYS);
                if rng.random_bool(0.5) {
                    let ppa = format!("ppa-{}", i + 1);
                    wait_until(Duration::from_secs(4), || {
                        let dirty = fake
                            .description(&ppa)
                            .and_then(|d| parse_description(&d).record)
                            .is_some_and(|r| r.state == SlotState::Dirty);
                        async move { dirty }
                    })
                    .await;
                }
                // Half of the time it is also cut off, as by a network split: the broker drops
                // its connection (and lock) at once, and the paused worker is woken before its
                // own heartbeat check could notice, so it goes on believing it holds the lock
                // until that check ends its connection. Otherwise it is paused for longer than
                // two heartbeats, and the broker takes the lock back for the silence.
                let split = rng.random_bool(0.5);
                if let Some((holder, own_proxy)) = stack.lock_holder(i) {
                    holder.signal("STOP");
                    let pause = if split {
                        own_proxy.sever();
                        rng.random_range(1500..3000)
                    } else {
                        HEARTBEAT_SECS * 1000 * 2 + rng.random_range(1000..3000)
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    holder.signal("CONT");
                    if split {
                        tokio::time::sleep(Duration::from_millis(HEARTBEAT_SECS * 2000)).await;
                        own_proxy.cut();
                    }
                    stalls += 1;
                }
            }
            Fault::KillAssigner => {
                if let Some(mut a) = stack.assigner.take() {
                    a.kill();
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
                stack.start_assigner();
            }
            Fault::BrokerRestart => {
                let began = Instant::now();
                let k = rng.random_range(0..nodes.len());
                broker = tokio::task::spawn_blocking(move || {
                    match &mut broker {
                        Broker::Node(node) => node.restart(),
                        Broker::Cluster(cluster) => {
                            cluster.nodes[k].restart();
                            cluster.wait_running(3, Duration::from_secs(60));
                        }
                    }
                    broker
                })
                .await
                .unwrap();
                node_faults.push(("restart", began, Instant::now()));
            }
            Fault::KillNode => {
                let Broker::Cluster(cluster) = &mut broker else {
                    unreachable!("a cluster fault")
                };
                let pool_queue = format!("chaos.assign.{POOL}");
                let leader = tokio::task::block_in_place(|| cluster.leader_of(&pool_queue));
                let k = match leader {
                    Some(leader) if rng.random_bool(0.5) => leader,
                    _ => rng.random_range(0..cluster.nodes.len()),
                };
                let began = Instant::now();
                tokio::task::block_in_place(|| cluster.nodes[k].kill());
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
                tokio::task::block_in_place(|| {
                    cluster.nodes[k].relaunch();
                    cluster.wait_running(3, Duration::from_secs(60));
                });
                let kind = if leader == Some(k) {
                    "kill_leader"
                } else {
                    "kill"
                };
                node_faults.push((kind, began, Instant::now()));
                if leader == Some(k) {
                    *injected.entry("KillNode(leader)".to_owned()).or_default() += 1;
                }
            }
            Fault::PauseNode => {
                let Broker::Cluster(cluster) = &broker else {
                    unreachable!("a cluster fault")
                };
                let k = rng.random_range(0..cluster.nodes.len());
                let began = Instant::now();
                cluster.nodes[k].signal("-STOP");
                let pause = HEARTBEAT_SECS * 1000 * 2 + rng.random_range(1000..3000);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                cluster.nodes[k].signal("-CONT");
                node_faults.push(("pause", began, Instant::now()));
            }
            Fault::CutConnections => {
                for p in std::iter::once(&proxy).chain(&stack.own_proxies) {
                    p.cut();
                }
            }
            Fault::StallConnections => {
                for p in std::iter::once(&proxy).chain(&stack.own_proxies) {
                    p.stall();
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
                for p in std::iter::once(&proxy).chain(&stack.own_proxies) {
                    p.resume();
                }
            }
            Fault::Store5xx => {
                fake.set_faults(Faults {
                    error_rate: 0.5,
                    ..Faults::default()
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
                fake.set_faults(Faults::default());
            }
            Fault::StoreSlow => {
                fake.set_faults(Faults {
                    latency_ms: 400,
                    ..Faults::default()
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
                fake.set_faults(Faults::default());
            }
            Fault::Store412 => {
                fake.set_faults(Faults {
                    forced_conflicts: 3,
                    ..Faults::default()
                });
            }
            Fault::Operator => {
                // A few actions in a row, as an operator at work (one fault in the round).
                for _ in 0..rng.random_range(2..=4) {
                    operator_fault(&http, &url, &mut rng, &mut disabled, &mut ops).await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
                }
            }
        }
        let recovered = wait_ready(&http, &url, Duration::from_secs(30)).await;
        max_recovery = max_recovery.max(recovered);
    }
    // The schedule is over: every disabled slot is enabled (a pending drain cancelled).
    enable_all(&http, &url, &mut disabled, &mut ops).await;
    for c in clients {
        c.await.unwrap();
    }
    fake.set_faults(Faults::default());

    // Quiesce: every slot must come back by itself within the longest lease plus cleaning
    // (a disabled one once enabled: an enable the worker had not applied yet is sent again).
    let quiesce = Instant::now();
    let mut all_free = false;
    while !all_free && quiesce.elapsed() < Duration::from_secs(60) {
        all_free = free_slots(&http, &url).await == Some(SLOTS);
        if !all_free {
            tokio::time::sleep(Duration::from_millis(500)).await;
            enable_all(&http, &url, &mut disabled, &mut ops).await;
        }
    }

    let mut tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
    let windows: Vec<_> = node_faults.iter().map(|(_, a, b)| (*a, *b)).collect();
    let (max_gap, max_gap_node_down) =
        longest_gaps(&mut tally.successes, run_start, stop, &windows);
    // The longest gap around each kind of node fault, for the availability report.
    let mut by_kind: BTreeMap<&str, Duration> = BTreeMap::new();
    for (kind, a, b) in &node_faults {
        let (_, gap) = longest_gaps(&mut tally.successes, run_start, stop, &[(*a, *b)]);
        let longest = by_kind.entry(kind).or_default();
        *longest = (*longest).max(gap);
    }
    let gaps_by_kind = by_kind
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_millis()))
        .collect::<Vec<_>>()
        .join(",");
    if !all_free {
        let view = http.get(format!("{url}/v1/slots")).send().await.ok();
        let body = match view {
            Some(r) => r.text().await.unwrap_or_default(),
            None => "unreachable".into(),
        };
        tally.violations.push(format!(
            "inv3: not every slot free {:?} after the clients stopped: {body}",
            quiesce.elapsed()
        ));
    }
    check_history(&fake, &mut tally);
    check_cleaned(&fake, &mut tally).await;
    let revoked = check_revocations(&fake, &ops, &mut tally);
    check_overlaps(&mut tally);
    check_deletions(&fake, &mut tally);

    let faults = injected
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    let total: u32 = injected.values().sum();
    let mut by_action: BTreeMap<String, u32> = BTreeMap::new();
    for op in &ops {
        let code = op.code.map_or("none".to_owned(), |c| c.to_string());
        *by_action.entry(format!("{}:{code}", op.kind)).or_default() += 1;
    }
    let actions = by_action
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    for v in tally.violations.iter().take(20) {
        eprintln!("violation: {v}");
    }
    println!(
        "chaos: acquires={} releases={} expiries={} faults={} ({}) holders_paused={} actions={} ({}) revoked={} takeovers={} deletions={} repeated_deletions={} max_recovery_ms={} max_gap_ms={} max_gap_node_down_ms={} ({}) violations={}",
        tally.acquires,
        tally.releases,
        count_expiries(&fake),
        total,
        faults,
        stalls,
        ops.len(),
        actions,
        revoked,
        count_takeovers(&fake),
        fake.deletions().len(),
        tally.repeated_deletions,
        max_recovery.as_millis(),
        max_gap.as_millis(),
        max_gap_node_down.as_millis(),
        gaps_by_kind,
        tally.violations.len()
    );
    eprintln!(
        "chaos: no_slot={} unavailable={} interrupted={} ambiguous_releases={} gave_up={} renews={} renews_refused={} wrong_token_refused={} never_released={} logs in {}",
        tally.no_slot,
        tally.unavailable,
        tally.interrupted,
        tally.ambiguous_releases,
        tally.gave_up,
        tally.renews,
        tally.renews_refused,
        tally.wrong_token_refused,
        tally.never_released,
        dir.display()
    );
    assert!(
        tally.acquires > 0,
        "no acquire succeeded at all; see the logs in {}",
        dir.display()
    );
    assert!(
        tally.violations.is_empty(),
        "{} violations; see the logs in {}",
        tally.violations.len(),
        dir.display()
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Revoked leases (DESIGN §7, invariant 1): a lease an operator revoked stops being valid at
/// the write that revoked it. For each hold, the write that took the slot from `used` with its
/// lease to `dirty` ends it; a hold that outlived that write (the client went on using the
/// slot, learning of it only from its next renew or release, `409`), or that got a refusal,
/// was revoked only if an operator sent a reclaim or a disable with `now` to that slot before
/// the write, one request for each such hold. Its hold then ends at the write — so the
/// cleaning after it is no deletion under a holder, while a deletion before it, or a second
/// holder before it, still is — and its refusals after the write are no violations. Any other
/// refusal is one. Returns how many holds were revoked.
fn check_revocations(fake: &FakeLaunchpad, ops: &[OpRequest], tally: &mut Tally) -> usize {
    let mut prev: HashMap<String, Option<berth::record::SlotRecord>> = HashMap::new();
    let mut ended: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    for write in fake.history() {
        let record = parse_description(&write.description).record;
        if let (Some(Some(before)), Some(after)) = (prev.get(&write.ppa), record.as_ref())
            && before.state == SlotState::Used
            && after.state == SlotState::Dirty
            && let Some(hash) = &before.lease_sha256
        {
            ended
                .entry((write.ppa.clone(), hash.clone()))
                .or_insert(write.at);
        }
        prev.insert(write.ppa.clone(), record);
    }
    let mut requests: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    for op in ops.iter().filter(|op| op.may_revoke()) {
        requests.entry(&op.slot).or_default().push(op.sent);
    }
    let mut outlived: Vec<(usize, DateTime<Utc>)> = tally
        .held
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let end = *ended.get(&(h.slot.clone(), h.token_sha256.clone()))?;
            (instant_of(end) < h.until || !h.refusals.is_empty()).then_some((i, end))
        })
        .collect();
    outlived.sort_by_key(|(_, end)| *end);
    let mut revoked = 0;
    for (i, end) in outlived {
        let h = &mut tally.held[i];
        let Some(sent) = requests.get_mut(h.slot.as_str()) else {
            continue;
        };
        let Some(first) = sent.iter().position(|s| *s <= end) else {
            continue;
        };
        sent.remove(first);
        let at = instant_of(end);
        h.revoked = Some(at);
        h.until = h.until.min(at);
        revoked += 1;
    }
    let mut found = Vec::new();
    for h in &tally.held {
        for r in &h.refusals {
            if h.revoked.is_none_or(|at| at > r.answered) {
                found.push(format!("inv1/2: {}", r.what));
            }
        }
    }
    tally.violations.extend(found);
    revoked
}

/// Invariant 1 from the clients' side: no two holders' intervals on one slot overlap.
fn check_overlaps(tally: &mut Tally) {
    let mut by_slot: HashMap<&str, Vec<&Held>> = HashMap::new();
    for h in &tally.held {
        by_slot.entry(&h.slot).or_default().push(h);
    }
    let mut found = Vec::new();
    for (slot, mut held) in by_slot {
        held.sort_by_key(|h| h.from);
        for pair in held.windows(2) {
            if pair[1].from < pair[0].until {
                found.push(format!(
                    "inv1: {slot} held by {} until {:?} after {} got it",
                    pair[0].owner,
                    pair[0].until - pair[1].from,
                    pair[1].owner
                ));
            }
        }
    }
    tally.violations.extend(found);
}

/// Fencing: no deletion reached a slot while a client held it (a paused or cut-off worker
/// that woke up still believing it held the slot lock would have sent one).
fn check_deletions(fake: &FakeLaunchpad, tally: &mut Tally) {
    let deletions = fake.deletions();
    let mut found = Vec::new();
    for deletion in &deletions {
        let at = instant_of(deletion.at);
        for h in tally.held.iter().filter(|h| h.slot == deletion.ppa) {
            if !(h.from < at && at < h.until) {
                continue;
            }
            // A cleaner paused between its fencing re-read and its request (the one round
            // trip DESIGN §3 "Fencing" leaves open) may repeat, under the next holder, a
            // deletion that was already requested before that hold began: a no-op on a
            // publication that is gone, never the holder's upload (the `date_created` cutoff
            // keeps those out). Counted, not a violation. Anything else is: an upload of the
            // holder's, or an older one still live when the slot was handed out.
            let done_before = deletions.iter().any(|earlier| {
                earlier.seq < deletion.seq
                    && earlier.ppa == deletion.ppa
                    && earlier.source == deletion.source
                    && instant_of(earlier.at) <= h.from
            });
            if done_before && instant_of(deletion.date_created) < h.from {
                tally.repeated_deletions += 1;
                continue;
            }
            found.push(format!(
                "fencing: deletion of {} {} (created {}) requested on {} while {} held it ({:?} into its hold)",
                deletion.package,
                deletion.version,
                deletion.date_created,
                deletion.ppa,
                h.owner,
                at - h.from
            ));
        }
    }
    tally.violations.extend(found);
}

/// How many times a worker took a slot over (raised the lock epoch) after the start.
fn count_takeovers(fake: &FakeLaunchpad) -> usize {
    let mut epochs: HashMap<String, u64> = HashMap::new();
    let mut n = 0;
    for write in fake.history() {
        let Some(record) = parse_description(&write.description).record else {
            continue;
        };
        if let Some(before) = epochs.insert(write.ppa.clone(), record.epoch)
            && record.epoch > before
        {
            n += 1;
        }
    }
    n
}

/// Invariant 3, the cleaning half: once every slot is free, no PPA holds a live upload.
async fn check_cleaned(fake: &FakeLaunchpad, tally: &mut Tally) {
    use berth::store::{LIVE_STATUSES, LaunchpadStore, SlotStore};
    let store = LaunchpadStore::new(
        &fake.api_root(),
        "devel",
        "berth-ci",
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    for i in 1..=SLOTS {
        let ppa = format!("ppa-{i}");
        for status in LIVE_STATUSES {
            let live = store.published_sources(&ppa, status).await.unwrap();
            if !live.is_empty() {
                tally.violations.push(format!(
                    "inv3: {ppa} still holds {} {status} uploads after the clients stopped",
                    live.len()
                ));
            }
        }
    }
}

/// Invariants 1 and 2 from the store's side: every claim starts from `free`, and every
/// slot a client got was recorded in the store with that owner and lease.
fn check_history(fake: &FakeLaunchpad, tally: &mut Tally) {
    let mut last: HashMap<String, Option<SlotState>> = HashMap::new();
    let mut claims: HashMap<(String, String), String> = HashMap::new();
    for write in fake.history() {
        let record = parse_description(&write.description).record;
        let prev = last
            .insert(write.ppa.clone(), record.as_ref().map(|r| r.state))
            .flatten();
        let Some(record) = record else { continue };
        if record.state == SlotState::Used
            && prev != Some(SlotState::Used)
            && prev != Some(SlotState::Free)
        {
            tally.violations.push(format!(
                "inv1: {} claimed from {prev:?}, not from free (write {})",
                write.ppa, write.seq
            ));
        }
        if record.state == SlotState::Used
            && let (Some(owner), Some(hash)) = (record.owner.clone(), record.lease_sha256.clone())
        {
            claims.insert((write.ppa.clone(), hash), owner);
        }
    }
    for h in &tally.held {
        match claims.get(&(h.slot.clone(), h.token_sha256.clone())) {
            Some(owner) if *owner == recorded_owner(&h.owner) => {}
            other => tally.violations.push(format!(
                "inv2: {} got {} but the store never recorded that lease for it (found {other:?})",
                h.owner, h.slot
            )),
        }
    }
}

fn count_expiries(fake: &FakeLaunchpad) -> usize {
    // A used → dirty write whose `last_error` is empty and whose lease had run out.
    let mut prev: HashMap<String, Option<berth::record::SlotRecord>> = HashMap::new();
    let mut n = 0;
    for write in fake.history() {
        let record = parse_description(&write.description).record;
        if let (Some(Some(before)), Some(after)) = (prev.get(&write.ppa), record.as_ref())
            && before.state == SlotState::Used
            && after.state == SlotState::Dirty
            && before.lease_expires.is_some_and(|e| e <= write.at)
        {
            n += 1;
        }
        prev.insert(write.ppa.clone(), record);
    }
    n
}

async fn free_slots(http: &reqwest::Client, url: &str) -> Option<usize> {
    let r = http
        .get(format!("{url}/v1/slots"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body: Value = r.json().await.ok()?;
    let slots = body["slots"].as_array()?;
    Some(slots.iter().filter(|s| s["state"] == "free").count())
}

async fn wait_ready(http: &reqwest::Client, url: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        let probe = http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(2))
            .send();
        if let Ok(r) = probe.await
            && r.status().is_success()
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        wait_until(limit, check).await,
        "timed out after {limit:?} waiting for {what}"
    );
}
