//! Steps that most policies share: picking GPUs for a gang, packing, and
//! ordering jobs. Pure functions over plain data, so they work the same in
//! Wasm and natively and are cheap to test.

use crate::{GpuId, GpuInfo, JobId, RunningJob};

/// Take `k` GPUs from the front of `free` (lowest ids first), or none if
/// fewer than `k` are left. A gang is all or nothing.
pub fn take_gpus(free: &mut Vec<GpuId>, k: u32) -> Option<Vec<GpuId>> {
    let k = k as usize;
    if k == 0 || free.len() < k {
        return None;
    }
    Some(free.drain(..k).collect())
}

/// GPU id to node, built once from [`crate::View::gpus`] and kept: the
/// topology changes only with `gpu-changed` events.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    node_of: Vec<u32>,
}

impl Topology {
    /// Build from the host's GPU list.
    pub fn new(gpus: &[GpuInfo]) -> Self {
        let mut node_of = vec![0; gpus.iter().map(|g| g.id as usize + 1).max().unwrap_or(0)];
        for g in gpus {
            node_of[g.id as usize] = g.node;
        }
        Topology { node_of }
    }

    /// Number of GPUs known.
    pub fn len(&self) -> usize {
        self.node_of.len()
    }

    /// Whether no GPU is known.
    pub fn is_empty(&self) -> bool {
        self.node_of.is_empty()
    }

    /// The node a GPU is on (0 for unknown ids).
    pub fn node(&self, gpu: GpuId) -> u32 {
        self.node_of.get(gpu as usize).copied().unwrap_or(0)
    }

    /// Number of distinct nodes a set of GPUs spans.
    pub fn nodes_spanned(&self, gpus: &[GpuId]) -> usize {
        let mut nodes: Vec<u32> = gpus.iter().map(|&g| self.node(g)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    }

    /// Take `k` GPUs from `free` for a gang, keeping it on as few nodes as
    /// possible: the fullest node that fits it whole (best fit, so that big
    /// holes stay for big gangs), else the nodes with the most free GPUs.
    /// None if fewer than `k` are free.
    pub fn take_gang(&self, free: &mut Vec<GpuId>, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || free.len() < k {
            return None;
        }
        // Free GPUs per node, in node order (deterministic).
        let mut per_node: Vec<(u32, usize)> = Vec::new();
        for &g in free.iter() {
            let n = self.node(g);
            match per_node.iter_mut().find(|(node, _)| *node == n) {
                Some((_, c)) => *c += 1,
                None => per_node.push((n, 1)),
            }
        }
        let best_fit = per_node
            .iter()
            .filter(|(_, c)| *c >= k)
            .min_by_key(|(n, c)| (*c, *n))
            .map(|(n, _)| *n);
        let order: Vec<u32> = match best_fit {
            Some(n) => vec![n],
            None => {
                let mut by_size = per_node.clone();
                by_size.sort_by_key(|(n, c)| (std::cmp::Reverse(*c), *n));
                by_size.into_iter().map(|(n, _)| n).collect()
            }
        };
        let mut chosen = Vec::with_capacity(k);
        for n in order {
            for &g in free.iter() {
                if chosen.len() == k {
                    break;
                }
                if self.node(g) == n {
                    chosen.push(g);
                }
            }
        }
        free.retain(|g| !chosen.contains(g));
        chosen.sort_unstable();
        Some(chosen)
    }
}

/// The `k` online GPUs with the least share taken (ties: lowest id), for
/// packing. GPUs whose remaining share is below `min_free_share` are skipped.
pub fn least_loaded_gpus(gpus: &[GpuInfo], k: usize, min_free_share: f64) -> Vec<GpuId> {
    let mut loads: Vec<(f64, GpuId)> = gpus
        .iter()
        .filter(|g| g.online)
        .map(|g| (g.residents.iter().map(|r| r.fraction).sum::<f64>(), g.id))
        .filter(|(load, _)| 1.0 - load >= min_free_share - 1e-9)
        .collect();
    loads.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    loads.into_iter().take(k).map(|(_, id)| id).collect()
}

/// Running jobs ordered by attained GPU-seconds, least first (ties: older
/// submission, then id): the order of least-attained-service policies.
pub fn by_attained_service(running: &[RunningJob]) -> Vec<JobId> {
    let mut v: Vec<&RunningJob> = running.iter().collect();
    v.sort_by(|a, b| {
        a.attained_gpu_seconds
            .total_cmp(&b.attained_gpu_seconds)
            .then(a.submit_time.total_cmp(&b.submit_time))
            .then(a.id.cmp(&b.id))
    });
    v.into_iter().map(|r| r.id).collect()
}

/// A tiny, dependency-free byte codec for [`crate::Policy::snapshot`]:
/// little-endian integers and floats appended to a buffer.
#[derive(Debug, Default)]
pub struct Encoder(pub Vec<u8>);

impl Encoder {
    /// Append a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Append an f64.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Append raw bytes, length-prefixed.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
}

/// Reads what an [`Encoder`] wrote; every read fails cleanly on truncated input.
#[derive(Debug)]
pub struct Decoder<'a>(pub &'a [u8]);

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err(format!("snapshot truncated: wanted {n} bytes, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    /// Read a u64.
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad u64")?))
    }
    /// Read an f64.
    pub fn f64(&mut self) -> Result<f64, String> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(b.try_into().map_err(|_| "bad f64")?))
    }
    /// Read length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&[u8], String> {
        let n = self.u64()? as usize;
        self.take(n)
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(id: GpuId, node: u32) -> GpuInfo {
        GpuInfo {
            id,
            node,
            kind: "test".into(),
            memory_total: 0,
            memory_used: 0,
            online: true,
            residents: vec![],
        }
    }

    #[test]
    fn gang_prefers_one_node_best_fit() {
        // Nodes of 4: node 0 has 3 free, node 1 has 2 free.
        let topo = Topology::new(&(0..8).map(|i| gpu(i, i / 4)).collect::<Vec<_>>());
        let mut free = vec![0, 1, 2, 4, 5];
        assert_eq!(topo.take_gang(&mut free, 2), Some(vec![4, 5]));
        assert_eq!(free, vec![0, 1, 2]);
        assert_eq!(topo.take_gang(&mut free, 4), None);
    }

    #[test]
    fn gang_spreads_when_no_node_fits() {
        let topo = Topology::new(&(0..8).map(|i| gpu(i, i / 4)).collect::<Vec<_>>());
        let mut free = vec![0, 1, 2, 4, 5];
        let g = topo.take_gang(&mut free, 4).unwrap();
        assert_eq!(g, vec![0, 1, 2, 4]);
        assert_eq!(topo.nodes_spanned(&g), 2);
    }

    #[test]
    fn codec_round_trip_and_truncation() {
        let mut e = Encoder::default();
        e.u64(7).f64(1.5).bytes(b"xy");
        let mut d = Decoder(&e.0);
        assert_eq!(d.u64(), Ok(7));
        assert_eq!(d.f64(), Ok(1.5));
        assert_eq!(d.bytes(), Ok(&b"xy"[..]));
        assert!(d.is_empty());
        assert!(Decoder(&e.0[..5]).u64().is_err());
    }
}
