//! The dependency queue: which stage may be decided on, and which may start, given what
//! has finished and which resources are free. Pure and synchronous — no tokio, no files —
//! so its behaviour is tested as a trace (cargo's `DependencyQueue` is the model).
//!
//! 1. [`Queue::new`]: nodes `0..n` with their dependencies, the plan's order, the number of
//!    job slots and the device tokens (`cuda:0`, `cuda:1`, or `cpu` workers).
//! 2. [`Queue::next_ready`] hands out, in plan order, each node whose dependencies have all
//!    finished, exactly once. The caller decides: the node is cached, skipped or blocked
//!    ([`Queue::finish`] at once), or it must run ([`Queue::enqueue`] with what it needs).
//! 3. [`Queue::start_next`] starts the first queued node (in plan order) whose needs are
//!    free now and returns its [`Lease`]; [`Queue::finish`] gives the lease back.
//! 4. A node that waits for a job slot or a device is evaluated once: the queue keeps it
//!    queued, it never comes back through `next_ready`.
//!
//! The queue does not know whether a finished node succeeded: whether dependents may use
//! its output is the drain loop's business (it decides on them when they come out ready).

/// What a stage holds while it runs, beside its job slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// Device tokens it needs to start (0: a CPU-only stage).
    pub devices: usize,
    /// Device tokens it takes if they are free when it starts (at least `devices`): a
    /// sampling stage starts on one device and fans out over every free one.
    pub most: usize,
}

impl Need {
    /// Exactly `n` devices.
    pub const fn exactly(n: usize) -> Self {
        Self {
            devices: n,
            most: n,
        }
    }
    /// At least `least`, and as many more free ones as there are, up to `most`.
    pub const fn up_to(least: usize, most: usize) -> Self {
        Self {
            devices: least,
            most: if most < least { least } else { most },
        }
    }
}

/// What a started node holds until it finishes: one job slot and these device tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// Indices into the queue's device tokens, ascending.
    pub devices: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Some dependency has not finished.
    Waiting,
    /// Handed out by `next_ready`; the caller is deciding.
    Deciding,
    /// Wants to run.
    Queued(Need),
    Running(Lease),
    Finished,
}

/// Nodes, edges and resource tokens; see the module doc.
#[derive(Debug, Clone)]
pub struct Queue {
    deps: Vec<Vec<usize>>,
    order: Vec<usize>,
    phase: Vec<Phase>,
    free_slots: usize,
    /// `true`: token `i` is free.
    free_devices: Vec<bool>,
}

/// A node asked for more than the machine has: it could never start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs {wanted} device(s) but only {available} exist")]
pub struct Unsatisfiable {
    pub wanted: usize,
    pub available: usize,
}

impl Queue {
    /// `deps[i]`: the nodes `i` needs; `order`: a topological order of `0..n` (ties are
    /// broken by it); `slots`: stages that may run at once (at least 1); `devices`: how many
    /// device tokens there are.
    pub fn new(deps: Vec<Vec<usize>>, order: Vec<usize>, slots: usize, devices: usize) -> Self {
        let n = deps.len();
        debug_assert_eq!(order.len(), n);
        Self {
            deps,
            order,
            phase: vec![Phase::Waiting; n],
            free_slots: slots.max(1),
            free_devices: vec![true; devices],
        }
    }

    /// The next node (in plan order) whose dependencies have all finished and that has not
    /// been handed out before.
    pub fn next_ready(&mut self) -> Option<usize> {
        let i = self.order.iter().copied().find(|&i| {
            self.phase[i] == Phase::Waiting
                && self.deps[i]
                    .iter()
                    .all(|&d| self.phase[d] == Phase::Finished)
        })?;
        self.phase[i] = Phase::Deciding;
        Some(i)
    }

    /// Node `i` (handed out by `next_ready`) must run and will hold `need` besides a job slot.
    pub fn enqueue(&mut self, i: usize, need: Need) -> Result<(), Unsatisfiable> {
        debug_assert_eq!(self.phase[i], Phase::Deciding);
        if need.devices > self.free_devices.len() {
            return Err(Unsatisfiable {
                wanted: need.devices,
                available: self.free_devices.len(),
            });
        }
        self.phase[i] = Phase::Queued(need);
        Ok(())
    }

    /// Start the first queued node (in plan order) whose needs are free now.
    pub fn start_next(&mut self) -> Option<(usize, Lease)> {
        if self.free_slots == 0 {
            return None;
        }
        let free = self.free_devices.iter().filter(|&&f| f).count();
        let i = self
            .order
            .iter()
            .copied()
            .find(|&i| matches!(self.phase[i], Phase::Queued(need) if need.devices <= free))?;
        let Phase::Queued(need) = self.phase[i] else {
            unreachable!("found queued above")
        };
        let devices: Vec<usize> = (0..self.free_devices.len())
            .filter(|&d| self.free_devices[d])
            .take(need.most.max(need.devices))
            .collect();
        for &d in &devices {
            self.free_devices[d] = false;
        }
        self.free_slots -= 1;
        let lease = Lease { devices };
        self.phase[i] = Phase::Running(lease.clone());
        Some((i, lease))
    }

    /// Queued nodes that have not started, removed from the queue (the run is stopping);
    /// the caller finishes each one.
    pub fn take_queued(&mut self) -> Vec<usize> {
        let taken: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| matches!(self.phase[i], Phase::Queued(_)))
            .collect();
        for &i in &taken {
            self.phase[i] = Phase::Deciding;
        }
        taken
    }

    /// Node `i` ended (ran, or was decided without running); a running node gives back
    /// its slot and devices.
    pub fn finish(&mut self, i: usize) {
        if let Phase::Running(lease) = &self.phase[i] {
            for &d in &lease.devices {
                self.free_devices[d] = true;
            }
            self.free_slots += 1;
        }
        self.phase[i] = Phase::Finished;
    }

    /// Nodes running now.
    pub fn running(&self) -> usize {
        self.phase
            .iter()
            .filter(|p| matches!(p, Phase::Running(_)))
            .count()
    }

    /// Nodes waiting for a job slot or a device.
    pub fn queued(&self) -> usize {
        self.phase
            .iter()
            .filter(|p| matches!(p, Phase::Queued(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Need = Need::exactly(0);
    const GPU: Need = Need::exactly(1);

    /// a -> {b, c} -> d, declared in that order.
    fn diamond(slots: usize, devices: usize) -> Queue {
        Queue::new(
            vec![vec![], vec![0], vec![0], vec![1, 2]],
            vec![0, 1, 2, 3],
            slots,
            devices,
        )
    }

    #[test]
    fn nodes_come_out_ready_once_their_deps_finished() {
        let mut q = diamond(4, 0);
        assert_eq!(q.next_ready(), Some(0));
        assert_eq!(q.next_ready(), None);
        q.enqueue(0, CPU).unwrap();
        assert_eq!(q.start_next(), Some((0, Lease::default())));
        assert_eq!(q.next_ready(), None, "a is still running");
        q.finish(0);
        assert_eq!(q.next_ready(), Some(1));
        assert_eq!(q.next_ready(), Some(2));
        assert_eq!(q.next_ready(), None, "d needs b and c");
        // b is cached (finished without running); c runs.
        q.finish(1);
        q.enqueue(2, CPU).unwrap();
        assert_eq!(q.start_next(), Some((2, Lease::default())));
        assert_eq!(q.next_ready(), None);
        q.finish(2);
        assert_eq!(q.next_ready(), Some(3));
    }

    #[test]
    fn job_slots_limit_what_runs_at_once() {
        let mut q = diamond(1, 0);
        q.next_ready();
        q.finish(0);
        for i in [1, 2] {
            assert_eq!(q.next_ready(), Some(i));
            q.enqueue(i, CPU).unwrap();
        }
        assert_eq!(q.start_next().map(|s| s.0), Some(1));
        assert_eq!(q.start_next(), None, "one slot");
        assert_eq!((q.running(), q.queued()), (1, 1));
        q.finish(1);
        assert_eq!(q.start_next().map(|s| s.0), Some(2));
        assert_eq!(
            q.next_ready(),
            None,
            "c still runs, and 2 was not handed out again"
        );
    }

    #[test]
    fn devices_are_tokens() {
        // Three independent GPU stages and a CPU one on two devices.
        let mut q = Queue::new(vec![vec![]; 4], vec![0, 1, 2, 3], 8, 2);
        for (i, need) in [(0, GPU), (1, Need::exactly(2)), (2, GPU), (3, CPU)] {
            assert_eq!(q.next_ready(), Some(i));
            q.enqueue(i, need).unwrap();
        }
        assert_eq!(q.start_next(), Some((0, Lease { devices: vec![0] })));
        // 1 wants both devices: it waits; 2 fits on the other one; the CPU stage runs.
        assert_eq!(q.start_next(), Some((2, Lease { devices: vec![1] })));
        assert_eq!(q.start_next(), Some((3, Lease::default())));
        assert_eq!(q.start_next(), None);
        q.finish(0);
        assert_eq!(q.start_next(), None, "device 1 is still held by 2");
        q.finish(2);
        assert_eq!(
            q.start_next(),
            Some((
                1,
                Lease {
                    devices: vec![0, 1]
                }
            ))
        );
    }

    #[test]
    fn a_fan_out_stage_takes_every_free_device_and_gives_them_back() {
        // A sampling stage (1..=8) beside a training stage that holds one of four devices.
        let mut q = Queue::new(vec![vec![]; 3], vec![0, 1, 2], 8, 4);
        q.next_ready();
        q.enqueue(0, GPU).unwrap();
        assert_eq!(q.start_next(), Some((0, Lease { devices: vec![0] })));
        q.next_ready();
        q.enqueue(1, Need::up_to(1, 8)).unwrap();
        assert_eq!(
            q.start_next(),
            Some((
                1,
                Lease {
                    devices: vec![1, 2, 3]
                }
            ))
        );
        q.next_ready();
        q.enqueue(2, GPU).unwrap();
        assert_eq!(q.start_next(), None, "every device is held");
        q.finish(1);
        assert_eq!(q.start_next(), Some((2, Lease { devices: vec![1] })));
        // Capped: two of the three free devices.
        let mut q = Queue::new(vec![vec![]], vec![0], 1, 3);
        q.next_ready();
        q.enqueue(0, Need::up_to(1, 2)).unwrap();
        assert_eq!(q.start_next().unwrap().1.devices, vec![0, 1]);
    }

    #[test]
    fn too_many_devices_is_refused_not_a_hang() {
        let mut q = Queue::new(vec![vec![]], vec![0], 1, 2);
        q.next_ready();
        assert_eq!(
            q.enqueue(0, Need::exactly(3)),
            Err(Unsatisfiable {
                wanted: 3,
                available: 2
            })
        );
    }

    #[test]
    fn stopping_takes_what_never_started() {
        let mut q = diamond(1, 0);
        q.next_ready();
        q.finish(0);
        for i in [1, 2] {
            q.next_ready();
            q.enqueue(i, CPU).unwrap();
        }
        assert_eq!(q.start_next().map(|s| s.0), Some(1));
        assert_eq!(q.take_queued(), vec![2]);
        q.finish(2);
        assert_eq!(q.start_next(), None);
        q.finish(1);
        assert_eq!(q.next_ready(), Some(3));
    }

    #[test]
    fn plan_order_breaks_ties() {
        // Declared 0, 1, 2 but the plan's order is 2, 0, 1.
        let mut q = Queue::new(vec![vec![]; 3], vec![2, 0, 1], 1, 0);
        let ready: Vec<usize> = std::iter::from_fn(|| q.next_ready()).collect();
        assert_eq!(ready, vec![2, 0, 1]);
    }
}
