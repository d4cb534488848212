//! The launch handshake of a data-parallel `relay exec` (one process per GPU under torchrun
//! or `srun`): rank 0 runs the executor and decides whether the stage runs at all, and the
//! other ranks learn its verdict before they do anything, so that no rank waits for a peer
//! that will never come (a cached stage, a stage another process holds, a failure before
//! training starts).
//!
//! 1. Rank 0 listens on `MASTER_ADDR`:`MASTER_PORT` + 2 ([`Announcer::listen`]); `+ 1` is the
//!    NCCL id rendezvous, torchrun keeps `MASTER_PORT` itself.
//! 2. Rank 0 announces once ([`Announcer::announce`]): `run` just before the stage's kind
//!    starts, else `cached` or `failed: why` when the run ends; every follower that
//!    connects, before or after, gets that line.
//! 3. A follower ([`await_verdict`]) connects (retrying while rank 0 starts up), reads the
//!    line and exits at once unless it is `run`.
//! 4. Rank 0 waits, for a bounded time, until every follower has heard the verdict
//!    ([`Announcer::finish`]), then exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::base::world::World;

/// What rank 0 decided about the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The stage runs: follow it.
    Run,
    /// It is up to date: nothing to do.
    Cached,
    /// It does not run, for this reason.
    Failed(String),
}

impl Verdict {
    fn line(&self) -> String {
        match self {
            Verdict::Run => "run\n".into(),
            Verdict::Cached => "cached\n".into(),
            Verdict::Failed(why) => format!("failed: {}\n", why.replace('\n', " ")),
        }
    }

    fn parse(line: &str) -> anyhow::Result<Self> {
        let line = line.trim_end();
        Ok(match line {
            "run" => Verdict::Run,
            "cached" => Verdict::Cached,
            _ => match line.strip_prefix("failed: ") {
                Some(why) => Verdict::Failed(why.to_string()),
                None => anyhow::bail!("rank 0 sent an unknown verdict {line:?}"),
            },
        })
    }
}

/// Where the handshake happens: `MASTER_ADDR`, `MASTER_PORT` + 2.
pub fn address_from_env() -> anyhow::Result<(String, u16)> {
    crate::base::world::master_from_env(2)
}

struct Shared {
    verdict: Mutex<Option<Verdict>>,
    said: Condvar,
    served: AtomicUsize,
}

/// Rank 0's side of the handshake.
pub struct Announcer {
    shared: Arc<Shared>,
    followers: usize,
}

impl Announcer {
    /// Listen for the other `world.size - 1` ranks on `addr:port`.
    pub fn listen(world: World, addr: &str, port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((addr, port))
            .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
            .with_context(|| {
                format!(
                    "rank 0 cannot listen on {addr}:{port} (MASTER_PORT + 2) for the other ranks"
                )
            })?;
        let shared = Arc::new(Shared {
            verdict: Mutex::new(None),
            said: Condvar::new(),
            served: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Ok(Self {
            shared,
            followers: world.size.saturating_sub(1),
        })
    }

    /// Say what happens to the stage; only the first verdict counts.
    pub fn announce(&self, v: Verdict) {
        let mut g = self.shared.verdict.lock().expect("verdict");
        if g.is_none() {
            *g = Some(v);
            self.shared.said.notify_all();
        }
    }

    /// Whether a verdict was given.
    pub fn announced(&self) -> bool {
        self.shared.verdict.lock().expect("verdict").is_some()
    }

    /// Wait until every follower heard the verdict, at most `timeout`; returns how many did.
    pub fn finish(&self, timeout: Duration) -> usize {
        let t0 = Instant::now();
        while self.shared.served.load(Ordering::SeqCst) < self.followers && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.served.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("followers", &self.followers)
            .finish()
    }
}

/// One follower: wait for the verdict, send it.
fn serve(mut stream: TcpStream, s: &Shared) {
    let mut g = s.verdict.lock().expect("verdict");
    while g.is_none() {
        g = s.said.wait(g).expect("verdict");
    }
    let line = g.as_ref().expect("set").line();
    drop(g);
    if stream
        .write_all(line.as_bytes())
        .and_then(|()| stream.flush())
        .is_ok()
    {
        s.served.fetch_add(1, Ordering::SeqCst);
    }
}

/// A follower's side: connect to rank 0 (retrying for up to `connect` while it starts),
/// then wait up to `decide` for its verdict.
pub fn await_verdict(
    world: World,
    addr: &str,
    port: u16,
    connect: Duration,
    decide: Duration,
) -> anyhow::Result<Verdict> {
    let t0 = Instant::now();
    let stream = loop {
        match TcpStream::connect((addr, port)) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < connect => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => anyhow::bail!(
                "rank {} could not reach rank 0 at {addr}:{port} (MASTER_PORT + 2) within {} s ({e}); \
                 is rank 0 running? check MASTER_ADDR and MASTER_PORT",
                world.rank,
                connect.as_secs()
            ),
        }
    };
    stream.set_read_timeout(Some(decide))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| {
            format!(
                "rank {} heard nothing from rank 0 within {} s",
                world.rank,
                decide.as_secs()
            )
        })?;
    if line.is_empty() {
        anyhow::bail!("rank 0 closed the connection before saying whether the stage runs");
    }
    Verdict::parse(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_hear_the_verdict_given_before_or_after_they_connect() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let world = World {
            rank: 0,
            size: 3,
            local_rank: 0,
        };
        let a = Announcer::listen(world, "127.0.0.1", port).unwrap();
        let wait = |rank| {
            std::thread::spawn(move || {
                let w = World { rank, ..world };
                await_verdict(
                    w,
                    "127.0.0.1",
                    port,
                    Duration::from_secs(10),
                    Duration::from_secs(10),
                )
                .unwrap()
            })
        };
        let early = wait(1);
        a.announce(Verdict::Failed("stage `x` is\nbusy".into()));
        a.announce(Verdict::Run); // ignored: the first verdict counts
        let late = wait(2);
        let want = Verdict::Failed("stage `x` is busy".into());
        assert_eq!(early.join().unwrap(), want);
        assert_eq!(late.join().unwrap(), want);
        assert_eq!(a.finish(Duration::from_secs(5)), 2);
    }

    #[test]
    fn a_follower_without_rank_0_gives_up() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let w = World {
            rank: 1,
            size: 2,
            local_rank: 1,
        };
        let e = await_verdict(
            w,
            "127.0.0.1",
            port,
            Duration::from_millis(200),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is rank 0 running?"), "{e}");
    }
}
