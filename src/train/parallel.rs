//! Data-parallel training: one rank per device, each on its slice of every step's batch, gradients summed
//! over all of them after every step.
//!
//! The trainer speaks to the other processes through a [`Collective`]:
//! * [`Solo`]: one process (the CPU, or one GPU) — every collective is the identity;
//! * [`ThreadGroup`]: ranks as threads of one process, tensors exchanged in memory. It
//!   tests the data-parallel path where there is no second GPU (CI);
//! * `Nccl` (`--features nccl`): one process per CUDA device, NCCL all-reduce on the
//!   device's own stream; the NCCL id travels from rank 0 to the others over TCP
//!   ([`rendezvous`] on `MASTER_ADDR`, port `MASTER_PORT` + 1, as torchrun and relay's Slurm
//!   scripts set them).
//!
//! Gradients are *summed*, not averaged as PyTorch's DDP does: W processes of B/W images
//! then compute the gradient of one process of B images, so a run's result does not depend
//! on how many GPUs it had (up to float summation order).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Tensor};

use super::optim::TensorMap;
use super::World;

/// The collectives the trainer needs. Tensors are 1-D and contiguous, F32 or F64, on the
/// rank's device; every rank calls the same collectives in the same order.
pub trait Collective {
    fn world(&self) -> World;
    /// The element-wise sum of `t` over all ranks, on every rank.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank 0's `t` on every rank (the others pass a tensor of the same shape and dtype).
    fn broadcast(&self, t: &Tensor) -> Result<Tensor>;
    /// Every rank's `t` ([n]) concatenated in rank order ([size · n]), on every rank.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
}

/// One process: nothing to exchange.
pub struct Solo;

impl Collective for Solo {
    fn world(&self) -> World {
        World::default()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// Ranks as threads of one process: `relay run` training on several local devices (one
/// thread per device, tensors exchanged through memory) and the tests. Sums run in rank
/// order, so every rank gets the same bits. A rank that leaves (its thread returned an
/// error or panicked, dropping its member) breaks the group: the others' next collective
/// fails instead of waiting for a peer that will never come.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    slots: Mutex<Vec<Option<Tensor>>>,
    gate: Gate,
}

/// A reusable barrier that a leaving rank breaks.
struct Gate {
    /// (arrived in this round, round, broken by rank)
    state: Mutex<(usize, u64, Option<usize>)>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self, size: usize) -> Result<()> {
        let poisoned = || candle_core::Error::Msg("a rank of the thread group panicked".into());
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        if let Some(r) = st.2 {
            candle_core::bail!("rank {r} of the thread group stopped");
        }
        let round = st.1;
        st.0 += 1;
        if st.0 == size {
            st.0 = 0;
            st.1 += 1;
            self.cv.notify_all();
            return Ok(());
        }
        while st.1 == round && st.2.is_none() {
            st = self.cv.wait(st).map_err(|_| poisoned())?;
        }
        match (st.1 == round, st.2) {
            (true, Some(r)) => candle_core::bail!("rank {r} of the thread group stopped"),
            _ => Ok(()),
        }
    }

    fn leave(&self, rank: usize) {
        if let Ok(mut st) = self.state.lock() {
            st.2.get_or_insert(rank);
            self.cv.notify_all();
        }
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        // The ranks that finished the same collectives are past every round by now; only
        // a rank still waiting (a peer stopped early) is woken with an error.
        self.shared.gate.leave(self.rank);
    }
}

impl ThreadGroup {
    /// The `size` members of a new group; hand one to each thread.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            slots: Mutex::new(vec![None; size]),
            gate: Gate {
                state: Mutex::new((0, 0, None)),
                cv: Condvar::new(),
            },
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Deposit `t`, wait for every rank, let `f` read all deposits, wait again (so that
    /// no rank deposits the next collective's tensor before everyone has read).
    fn exchange(&self, t: &Tensor, f: impl FnOnce(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
        let lock = || {
            self.shared
                .slots
                .lock()
                .map_err(|_| candle_core::Error::Msg("a rank of the thread group panicked".into()))
        };
        lock()?[self.rank] = Some(t.clone());
        self.shared.gate.wait(self.shared.size)?;
        let all: Vec<Tensor> = lock()?.iter().flatten().cloned().collect();
        self.shared.gate.wait(self.shared.size)?;
        if all.len() != self.shared.size {
            candle_core::bail!(
                "thread group: {} of {} ranks took part",
                all.len(),
                self.shared.size
            );
        }
        f(&all)
    }
}

impl Collective for ThreadGroup {
    fn world(&self) -> World {
        World {
            rank: self.rank,
            size: self.shared.size,
            local_rank: self.rank,
        }
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let dev = t.device().clone();
        self.exchange(t, |all| {
            let mut sum = all[0].to_device(&dev)?;
            for x in &all[1..] {
                sum = (sum + x.to_device(&dev)?)?;
            }
            Ok(sum)
        })
    }
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        let dev = t.device().clone();
        // A copy, as NCCL's broadcast gives: on one device `to_device` would hand every
        // rank rank 0's own storage, which the optimiser then updates in place twice.
        self.exchange(t, |all| all[0].to_device(&dev)?.copy())
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let dev = t.device().clone();
        self.exchange(t, |all| {
            let on: Vec<Tensor> = all
                .iter()
                .map(|x| x.to_device(&dev))
                .collect::<Result<_>>()?;
            Tensor::cat(&on, 0)
        })
    }
}

/// All tensors of `map` (name order) flattened into one F32 vector, then `extra`.
pub fn flatten(map: &TensorMap, extra: &[f32]) -> Result<Tensor> {
    let mut parts: Vec<Tensor> = map
        .values()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<Result<_>>()?;
    let dev = match map.values().next() {
        Some(t) => t.device().clone(),
        None => Device::Cpu,
    };
    if !extra.is_empty() {
        parts.push(Tensor::new(extra, &dev)?);
    }
    Tensor::cat(&parts, 0)
}

/// Inverse of [`flatten`]: tensors shaped as `like`'s, and the `extra` values.
pub fn unflatten(flat: &Tensor, like: &TensorMap, extra: usize) -> Result<(TensorMap, Vec<f32>)> {
    let mut out = TensorMap::new();
    let mut at = 0;
    for (name, t) in like {
        let n = t.elem_count();
        out.insert(name.clone(), flat.narrow(0, at, n)?.reshape(t.shape())?);
        at += n;
    }
    let tail = flat.narrow(0, at, extra)?.to_vec1::<f32>()?;
    Ok((out, tail))
}

/// Every tensor of `map` as rank 0 has it (one broadcast of the flattened map).
pub fn broadcast_map(group: &dyn Collective, map: &TensorMap) -> Result<TensorMap> {
    if group.world().size == 1 {
        return Ok(map.clone());
    }
    let flat = group.broadcast(&flatten(map, &[])?)?;
    let (mut out, _) = unflatten(&flat, map, 0)?;
    for (name, t) in out.iter_mut() {
        *t = t.to_dtype(map[name].dtype())?;
    }
    Ok(out)
}

/// `true` on every rank if it is `true` on any (an F64 all-reduce of one flag).
pub fn any(group: &dyn Collective, flag: bool, dev: &Device) -> Result<bool> {
    if group.world().size == 1 {
        return Ok(flag);
    }
    let t = Tensor::new(&[if flag { 1f64 } else { 0. }], dev)?;
    Ok(group.all_reduce_sum(&t)?.to_vec1::<f64>()?[0] > 0.0)
}

/// Rank 0 sends `bytes` to the `size − 1` other ranks over TCP; they return them.
/// Rank 0 listens on `port`; the others connect to `addr:port`, retrying until `timeout`.
pub fn rendezvous(
    world: World,
    addr: &str,
    port: u16,
    bytes: Option<&[u8]>,
    len: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    if world.rank == 0 {
        let Some(bytes) = bytes else {
            bail!("rendezvous: rank 0 has nothing to send")
        };
        let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| {
            format!("rank 0 cannot listen on port {port} (MASTER_PORT): pick a free port")
        })?;
        for _ in 1..world.size {
            let (mut s, _) = listener.accept().context("rank 0: accepting a rank")?;
            s.write_all(bytes).context("rank 0: sending the NCCL id")?;
        }
        return Ok(bytes.to_vec());
    }
    let start = Instant::now();
    let target = (addr, port)
        .to_socket_addrs()
        .with_context(|| format!("MASTER_ADDR `{addr}` does not resolve"))?
        .next()
        .with_context(|| format!("MASTER_ADDR `{addr}` has no address"))?;
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(mut s) => {
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf)
                    .with_context(|| format!("rank {}: reading the NCCL id from rank 0", world.rank))?;
                return Ok(buf);
            }
            Err(e) if start.elapsed() < timeout => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!(
                "rank {} could not reach rank 0 at {addr}:{port} within {} s ({e}); check MASTER_ADDR \
                 and MASTER_PORT and that rank 0 is running",
                world.rank,
                timeout.as_secs()
            ),
        }
    }
}

/// Where rank 0 hands out the NCCL id: `MASTER_ADDR`, `MASTER_PORT` + 1.
pub fn master_from_env() -> anyhow::Result<(String, u16)> {
    crate::base::world::master_from_env(1)
}

#[cfg(feature = "nccl")]
pub use nccl::Nccl;

#[cfg(feature = "nccl")]
mod nccl {
    use std::rc::Rc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::driver::DeviceRepr;
    use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::cuda::cudarc::nccl::NcclType;
    use candle_core::cuda::{CudaDType, CudaStorage};
    use candle_core::{CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

    use super::{master_from_env, rendezvous, Collective, World};

    /// One process per CUDA device, NCCL collectives on the device's stream.
    pub struct Nccl {
        comm: Rc<Comm>,
        world: World,
    }

    impl Nccl {
        /// Join the group: rank 0 makes the NCCL id and hands it out over TCP
        /// (`MASTER_ADDR`, `MASTER_PORT` + 1); every rank then initialises its communicator on
        /// `dev` (its own GPU, `cuda:LOCAL_RANK`).
        pub fn new(world: World, dev: &Device) -> anyhow::Result<Self> {
            let Device::Cuda(cuda) = dev else {
                anyhow::bail!("NCCL needs a CUDA device, not {dev:?}");
            };
            let id = if world.rank == 0 {
                Some(Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?)
            } else {
                None
            };
            let bytes: Option<Vec<u8>> = id
                .as_ref()
                .map(|id| id.internal().iter().map(|&c| c as u8).collect());
            let id = if world.size == 1 {
                id.expect("rank 0 made the id")
            } else {
                let (addr, port) = master_from_env()?;
                let got = rendezvous(
                    world,
                    &addr,
                    port,
                    bytes.as_deref(),
                    128,
                    std::time::Duration::from_secs(600),
                )?;
                let mut internal = [0 as std::ffi::c_char; 128];
                for (d, s) in internal.iter_mut().zip(&got) {
                    *d = *s as std::ffi::c_char;
                }
                Id::uninit(internal)
            };
            let comm =
                Comm::from_rank(cuda.cuda_stream(), world.rank, world.size, id).map_err(|e| {
                    anyhow::anyhow!(
                        "ncclCommInitRank (rank {} of {}): {e:?}",
                        world.rank,
                        world.size
                    )
                })?;
            Ok(Self {
                comm: Rc::new(comm),
                world,
            })
        }
    }

    #[derive(Clone, Copy)]
    enum Op {
        Sum,
        Broadcast,
        Gather,
    }

    struct NcclOp {
        comm: Rc<Comm>,
        op: Op,
    }

    impl NcclOp {
        fn run<T: CudaDType + NcclType + DeviceRepr>(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let n = l.shape().elem_count();
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL: the tensor must be contiguous");
            };
            let src = s.as_cuda_slice::<T>()?.slice(a..b);
            let err = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
            let size = self.comm.world_size();
            let (len, shape) = match self.op {
                Op::Gather => (n * size, Shape::from(n * size)),
                _ => (n, l.shape().clone()),
            };
            // SAFETY: every element is written by the collective before it is read.
            let mut dst = unsafe { dev.alloc::<T>(len)? };
            match self.op {
                Op::Sum => self
                    .comm
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(err)?,
                Op::Broadcast => self.comm.broadcast(Some(&src), &mut dst, 0).map_err(err)?,
                Op::Gather => self.comm.all_gather(&src, &mut dst).map_err(err)?,
            };
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), shape))
        }
    }

    impl CustomOp1 for NcclOp {
        fn name(&self) -> &'static str {
            "nccl"
        }
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL collectives need CUDA tensors")
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            match s.dtype() {
                DType::F32 => self.run::<f32>(s, l),
                DType::F64 => self.run::<f64>(s, l),
                d => candle_core::bail!("NCCL collectives take F32 or F64 tensors, not {d:?}"),
            }
        }
    }

    impl Nccl {
        fn apply(&self, t: &Tensor, op: Op) -> Result<Tensor> {
            t.contiguous()?.apply_op1_no_bwd(&NcclOp {
                comm: self.comm.clone(),
                op,
            })
        }
    }

    impl Collective for Nccl {
        fn world(&self) -> World {
            self.world
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            self.apply(t, Op::Sum)
        }
        fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
            self.apply(t, Op::Broadcast)
        }
        fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
            self.apply(t, Op::Gather)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank whose thread ends early (an error) must not leave the others waiting.
    #[test]
    fn a_rank_that_leaves_breaks_the_group_instead_of_hanging() {
        let mut group = ThreadGroup::new(2).into_iter();
        let (g0, g1) = (group.next().unwrap(), group.next().unwrap());
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        // Both take part in one collective, then rank 1 stops.
        let h = std::thread::spawn(move || {
            let t = Tensor::new(&[2f32], &Device::Cpu).unwrap();
            g1.all_reduce_sum(&t).map(|s| s.to_vec1::<f32>().unwrap())
        });
        assert_eq!(
            g0.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap(),
            [3.]
        );
        assert_eq!(h.join().unwrap().unwrap(), [3.]);
        let e = g0.all_reduce_sum(&t).unwrap_err().to_string();
        assert!(e.contains("rank 1") && e.contains("stopped"), "{e}");
    }

    #[test]
    fn thread_group_sums_broadcasts_and_gathers_in_rank_order() -> Result<()> {
        let group = ThreadGroup::new(3);
        let results: Vec<(Vec<f32>, Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|g| {
                    s.spawn(move || -> Result<_> {
                        let r = g.world().rank as f32;
                        let t = Tensor::new(&[r, 10. * r], &Device::Cpu)?;
                        let sum = g.all_reduce_sum(&t)?.to_vec1::<f32>()?;
                        let b = g.broadcast(&(t.clone() + 1.)?)?.to_vec1::<f32>()?;
                        let gathered = g
                            .all_gather(&Tensor::new(&[r as f64], &Device::Cpu)?)?
                            .to_vec1::<f64>()?;
                        Ok((sum, b, gathered))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Result<_>>()
        })?;
        for (sum, b, gathered) in results {
            assert_eq!(sum, vec![3., 30.]);
            assert_eq!(b, vec![1., 1.]);
            assert_eq!(gathered, vec![0., 1., 2.]);
        }
        Ok(())
    }

    #[test]
    fn flatten_round_trips_with_extras() -> Result<()> {
        let mut m = TensorMap::new();
        m.insert(
            "a".into(),
            Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?,
        );
        m.insert("b".into(), Tensor::new(&[7f32], &Device::Cpu)?);
        let flat = flatten(&m, &[8., 9.])?;
        assert_eq!(
            flat.to_vec1::<f32>()?,
            vec![0., 1., 2., 3., 4., 5., 7., 8., 9.]
        );
        let (back, extra) = unflatten(&flat, &m, 2)?;
        assert_eq!(back["a"].to_vec2::<f32>()?, m["a"].to_vec2::<f32>()?);
        assert_eq!(extra, vec![8., 9.]);
        Ok(())
    }

    #[test]
    fn rendezvous_hands_rank_0_bytes_to_every_rank() -> anyhow::Result<()> {
        // A free port: bind to 0, read it, release it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let payload: Vec<u8> = (0..128u8).collect();
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|rank| {
                    let p = payload.clone();
                    s.spawn(move || {
                        let w = World {
                            rank,
                            size: 3,
                            local_rank: rank,
                        };
                        let mine = (rank == 0).then_some(p.as_slice());
                        rendezvous(w, "127.0.0.1", port, mine, 128, Duration::from_secs(30))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<anyhow::Result<_>>()
        })?;
        for g in got {
            assert_eq!(g, payload);
        }
        Ok(())
    }
}
