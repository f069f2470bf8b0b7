//! What a cluster is made of: nodes in groups, each group one kind of GPU.
//!
//! Why a description of its own, not just a GPU count: what utilisation
//! policies act on is the cluster's shape. Gavel's heterogeneity awareness
//! needs GPU kinds that differ; consolidated placement (Tiresias, Gandiva)
//! needs node boundaries; a memory-aware packer needs each kind's memory.
//! One description feeds the simulator (`wsched sim --cluster FILE`) and
//! the service's emulated GPUs (`wsched serve --cluster FILE`), so a policy
//! meets the same cluster in both. `--gpus N --gpus-per-node K` stays as
//! shorthand for one homogeneous group ([`Topology::homogeneous`]).
//!
//! The file, in the `apiVersion/kind/metadata/spec` shape of the job
//! manifests (`examples/clusters/` has more):
//!
//! ```yaml
//! apiVersion: wsched.dev/v1
//! kind: Cluster
//! metadata:
//!   name: gavel-108
//! spec:
//!   nodeGroups:
//!     - {nodes: 9, gpusPerNode: 4, gpuKind: V100, memoryPerGpu: 16Gi, network: ib}
//!     - {nodes: 9, gpusPerNode: 4, gpuKind: P100, memoryPerGpu: 16Gi}
//!     - {nodes: 9, gpusPerNode: 4, gpuKind: K80, memoryPerGpu: 12Gi}
//! ```
//!
//! Nodes are numbered in file order, group after group, and GPUs likewise:
//! the first group's first node holds GPUs 0 to 3 here. Unknown fields are
//! errors, and every number is bounded, so that a typo or a hostile file
//! can neither drop a setting silently nor make the host build a cluster
//! it cannot hold.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cluster::GpuSpec;
use crate::units::{Quantity, bytes};

/// The `apiVersion` this reader understands.
pub const API_VERSION: &str = "wsched.dev/v1";

/// Most GPUs in one cluster.
pub const MAX_GPUS: u32 = 1 << 16;

/// Most GPUs on one node.
pub const MAX_GPUS_PER_NODE: u32 = 1024;

/// Most node groups in one description.
pub const MAX_GROUPS: usize = 1024;

/// Longest name (cluster, GPU kind, network class), in bytes.
pub const MAX_NAME: usize = 64;

/// Largest description file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// GPU memory given to GPU models an Alibaba node list names but whose
/// memory is not known (its undisclosed G1, G2, G3).
pub const UNKNOWN_MEMORY: u64 = 16 << 30;

/// The memory of a GPU model as Alibaba's node list names it.
fn pai_memory(model: &str) -> u64 {
    match model {
        "V100M32" => 32 << 30,
        "A10" => 24 << 30,
        "V100M16" | "P100" | "T4" => 16 << 30,
        _ => UNKNOWN_MEMORY,
    }
}

/// Nodes of one kind: how many, and what each holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeGroup {
    /// Nodes in the group.
    pub nodes: u32,
    /// GPUs on each node.
    pub gpus_per_node: u32,
    /// The GPU model, as policies see it (`V100`, `A100-80GB`).
    pub gpu_kind: String,
    /// Device memory of each GPU, in bytes.
    pub memory_per_gpu: u64,
    /// The nodes' network class (`ib`, `ethernet`), when given: what a
    /// gang spread over nodes of this group talks over.
    pub network: Option<String>,
}

impl NodeGroup {
    /// GPUs in the group.
    pub fn gpus(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }
}

/// A cluster: its name and its node groups, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// A name for reports (the file's `metadata.name`).
    pub name: String,
    groups: Vec<NodeGroup>,
}

/// Why a cluster description was refused. Its text names the file and
/// the field as the file spells it.
#[derive(Debug, Clone, PartialEq)]
pub enum TopologyError {
    /// The file could not be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Not YAML of the expected shape (an unknown field, a wrong type).
    Parse(String),
    /// A field out of bounds or inconsistent: the field, and why.
    Field {
        /// The field, as the file spells it (`spec.nodeGroups[1].gpusPerNode`).
        field: String,
        /// What is wrong with it.
        why: String,
    },
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyError::Read { path, why } => write!(f, "cannot read the cluster description {path}: {why}"),
            TopologyError::Parse(why) => write!(f, "cluster description: {why}"),
            TopologyError::Field { field, why } => write!(f, "cluster description: {field}: {why}"),
        }
    }
}

impl std::error::Error for TopologyError {}

fn field(field: impl Into<String>, why: impl Into<String>) -> TopologyError {
    TopologyError::Field {
        field: field.into(),
        why: why.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: Spec,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    node_groups: Vec<GroupSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupSpec {
    nodes: u32,
    gpus_per_node: u32,
    gpu_kind: String,
    memory_per_gpu: Quantity,
    network: Option<String>,
}

/// Checks a name: not empty (when `required`), at most [`MAX_NAME`]
/// bytes, no control characters.
fn check_name(value: &str, required: bool) -> Result<(), String> {
    if required && value.trim().is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_NAME {
        return Err(format!(
            "{} is longer than {MAX_NAME} bytes",
            crate::bounds::shown(value)
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{} contains control characters", crate::bounds::shown(value)));
    }
    Ok(())
}

impl Topology {
    /// `gpus` GPUs of one kind, `per_node` to a node (the last node holds
    /// the rest when `per_node` does not divide `gpus`): what `--gpus N
    /// --gpus-per-node K` means.
    pub fn homogeneous(gpus: u32, per_node: u32, kind: &str, memory_per_gpu: u64) -> Result<Topology, TopologyError> {
        if !(1..=MAX_GPUS).contains(&gpus) {
            return Err(field("gpus", format!("must be 1 to {MAX_GPUS}, got {gpus}")));
        }
        if !(1..=MAX_GPUS_PER_NODE).contains(&per_node) {
            return Err(field(
                "gpus per node",
                format!("must be 1 to {MAX_GPUS_PER_NODE}, got {per_node}"),
            ));
        }
        let group = |nodes: u32, gpus_per_node: u32| NodeGroup {
            nodes,
            gpus_per_node,
            gpu_kind: kind.to_string(),
            memory_per_gpu,
            network: None,
        };
        let mut groups = Vec::new();
        if gpus / per_node > 0 {
            groups.push(group(gpus / per_node, per_node));
        }
        if !gpus.is_multiple_of(per_node) {
            groups.push(group(1, gpus % per_node));
        }
        Topology::new(String::new(), groups)
    }

    /// A cluster of these groups, checked (see the module's bounds).
    pub fn new(name: String, groups: Vec<NodeGroup>) -> Result<Topology, TopologyError> {
        check_name(&name, false).map_err(|why| field("metadata.name", why))?;
        if groups.is_empty() {
            return Err(field("spec.nodeGroups", "at least one group is needed"));
        }
        if groups.len() > MAX_GROUPS {
            return Err(field(
                "spec.nodeGroups",
                format!("{} groups, the most is {MAX_GROUPS}", groups.len()),
            ));
        }
        let mut total: u64 = 0;
        for (i, g) in groups.iter().enumerate() {
            let at = |name: &str| format!("spec.nodeGroups[{i}].{name}");
            if g.nodes == 0 {
                return Err(field(at("nodes"), "must be at least 1"));
            }
            if !(1..=MAX_GPUS_PER_NODE).contains(&g.gpus_per_node) {
                return Err(field(
                    at("gpusPerNode"),
                    format!("must be 1 to {MAX_GPUS_PER_NODE}, got {}", g.gpus_per_node),
                ));
            }
            check_name(&g.gpu_kind, true).map_err(|why| field(at("gpuKind"), why))?;
            if g.memory_per_gpu == 0 || g.memory_per_gpu > crate::bounds::MAX_MEMORY_BYTES {
                return Err(field(
                    at("memoryPerGpu"),
                    format!("must be 1 byte to {} bytes", crate::bounds::MAX_MEMORY_BYTES),
                ));
            }
            if let Some(network) = &g.network {
                check_name(network, true).map_err(|why| field(at("network"), why))?;
            }
            total = total.saturating_add(g.gpus());
            if total > u64::from(MAX_GPUS) {
                return Err(field(
                    "spec.nodeGroups",
                    format!("more than {MAX_GPUS} GPUs in all (by group {i})"),
                ));
            }
        }
        Ok(Topology { name, groups })
    }

    /// Read a description from YAML text.
    pub fn from_yaml(text: &str) -> Result<Topology, TopologyError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| {
            // serde's messages may quote the offending text: bound them.
            TopologyError::Parse(crate::bounds::shown(&e.to_string()).trim_matches('"').to_string())
        })?;
        if file.api_version != API_VERSION {
            return Err(field(
                "apiVersion",
                format!(
                    "expected {API_VERSION}, got {}",
                    crate::bounds::shown(&file.api_version)
                ),
            ));
        }
        if file.kind != "Cluster" {
            return Err(field(
                "kind",
                format!("expected Cluster, got {}", crate::bounds::shown(&file.kind)),
            ));
        }
        if file.spec.node_groups.len() > MAX_GROUPS {
            return Err(field(
                "spec.nodeGroups",
                format!("{} groups, the most is {MAX_GROUPS}", file.spec.node_groups.len()),
            ));
        }
        let mut groups = Vec::with_capacity(file.spec.node_groups.len());
        for (i, g) in file.spec.node_groups.into_iter().enumerate() {
            let memory_per_gpu =
                bytes(&format!("spec.nodeGroups[{i}].memoryPerGpu"), &g.memory_per_gpu).map_err(|why| {
                    TopologyError::Field {
                        field: format!("spec.nodeGroups[{i}].memoryPerGpu"),
                        why: why.split_once(": ").map_or(why.clone(), |(_, rest)| rest.to_string()),
                    }
                })?;
            groups.push(NodeGroup {
                nodes: g.nodes,
                gpus_per_node: g.gpus_per_node,
                gpu_kind: g.gpu_kind,
                memory_per_gpu,
                network: g.network,
            });
        }
        Topology::new(file.metadata.name, groups)
    }

    /// A cluster from the node list of Alibaba's GPU trace v2023
    /// (`openb_node_list_*.csv`: `sn`, `gpu` (GPUs on the node), `model`):
    /// nodes without GPUs are left out, and nodes of one model and GPU
    /// count form one group, in order of first appearance. The list gives
    /// no GPU memory: known models get theirs (V100M16 16 GiB, V100M32 32
    /// GiB, P100 16 GiB, T4 16 GiB, A10 24 GiB), the undisclosed G1, G2 and
    /// G3 (and any other) [`UNKNOWN_MEMORY`], on which no pod of the trace
    /// depends (pods ask for no GPU memory).
    pub fn from_pai_node_list(name: &str, text: &str) -> Result<Topology, TopologyError> {
        let csv_error = |e: anyhow::Error| TopologyError::Parse(e.to_string());
        let mut csv = crate::files::Csv::new(name, text).map_err(csv_error)?;
        let (gpu, model) = (
            csv.need("gpu").map_err(csv_error)?,
            csv.need("model").map_err(csv_error)?,
        );
        let mut groups: Vec<NodeGroup> = Vec::new();
        while let Some((n, fields)) = csv.row().map_err(csv_error)? {
            let gpus: u32 = fields[gpu]
                .parse::<f64>()
                .ok()
                .filter(|g| g.fract() == 0.0 && (0.0..=f64::from(MAX_GPUS_PER_NODE)).contains(g))
                .map(|g| g as u32)
                .ok_or_else(|| {
                    field(
                        format!("{name}:{n}: column `gpu`"),
                        format!(
                            "{} is not a whole number from 0 to {MAX_GPUS_PER_NODE}",
                            crate::bounds::shown(fields[gpu])
                        ),
                    )
                })?;
            if gpus == 0 {
                continue;
            }
            let kind = fields[model];
            check_name(kind, true).map_err(|why| field(format!("{name}:{n}: column `model`"), why))?;
            match groups
                .iter_mut()
                .find(|g| g.gpu_kind == kind && g.gpus_per_node == gpus)
            {
                Some(g) => g.nodes += 1,
                None => {
                    if groups.len() >= MAX_GROUPS {
                        return Err(field(
                            format!("{name}:{n}"),
                            format!("more than {MAX_GROUPS} kinds of node"),
                        ));
                    }
                    groups.push(NodeGroup {
                        nodes: 1,
                        gpus_per_node: gpus,
                        gpu_kind: kind.to_string(),
                        memory_per_gpu: pai_memory(kind),
                        network: None,
                    });
                }
            }
            if groups.iter().map(NodeGroup::gpus).sum::<u64>() > u64::from(MAX_GPUS) {
                return Err(field(
                    format!("{name}:{n}"),
                    format!("more than {MAX_GPUS} GPUs in all"),
                ));
            }
        }
        if groups.is_empty() {
            return Err(field(name.to_string(), "no node with GPUs"));
        }
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem: String = stem.chars().filter(|c| !c.is_control()).take(MAX_NAME).collect();
        Topology::new(stem, groups)
    }

    /// Read a description file (at most [`MAX_FILE_BYTES`], a regular file):
    /// YAML as above, or an Alibaba PAI node list (a CSV whose header names
    /// `gpu` and `model`; see [`Topology::from_pai_node_list`]).
    pub fn read(path: &Path) -> Result<Topology, TopologyError> {
        let bytes = crate::files::read_regular_file(path, MAX_FILE_BYTES).map_err(|why| TopologyError::Read {
            path: path.display().to_string(),
            why,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| TopologyError::Read {
            path: path.display().to_string(),
            why: "not UTF-8 text".into(),
        })?;
        let header: Vec<String> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if header.iter().any(|c| c == "gpu") && header.iter().any(|c| c == "model") {
            return Topology::from_pai_node_list(&path.display().to_string(), &text);
        }
        Topology::from_yaml(&text)
    }

    /// The node groups, in order.
    pub fn groups(&self) -> &[NodeGroup] {
        &self.groups
    }

    /// GPUs in the cluster.
    pub fn gpus(&self) -> u32 {
        // Bounded by MAX_GPUS when built.
        u32::try_from(self.groups.iter().map(NodeGroup::gpus).sum::<u64>()).unwrap_or(MAX_GPUS)
    }

    /// Nodes in the cluster.
    pub fn nodes(&self) -> u32 {
        self.groups.iter().map(|g| g.nodes).sum()
    }

    /// Every GPU, by id: its node, kind and memory.
    pub fn gpu_specs(&self) -> Vec<GpuSpec> {
        let mut specs = Vec::with_capacity(self.gpus() as usize);
        let mut node = 0u32;
        for g in &self.groups {
            for _ in 0..g.nodes {
                for _ in 0..g.gpus_per_node {
                    specs.push(GpuSpec {
                        node,
                        kind: g.gpu_kind.clone(),
                        memory_total: g.memory_per_gpu,
                    });
                }
                node += 1;
            }
        }
        specs
    }

    /// The network class of node `node`, when its group gives one.
    pub fn network_of(&self, node: u32) -> Option<&str> {
        let mut first = 0u32;
        for g in &self.groups {
            if node < first + g.nodes {
                return g.network.as_deref();
            }
            first += g.nodes;
        }
        None
    }

    /// GPUs of each kind, in order of first appearance.
    pub fn kinds(&self) -> Vec<(String, u32)> {
        let mut kinds: Vec<(String, u32)> = Vec::new();
        for g in &self.groups {
            let n = u32::try_from(g.gpus()).unwrap_or(MAX_GPUS);
            match kinds.iter_mut().find(|(k, _)| *k == g.gpu_kind) {
                Some((_, count)) => *count += n,
                None => kinds.push((g.gpu_kind.clone(), n)),
            }
        }
        kinds
    }

    /// One line for people: "36 V100 + 36 P100 + 36 K80 on 27 nodes".
    pub fn describe(&self) -> String {
        let kinds: Vec<String> = self.kinds().iter().map(|(k, n)| format!("{n} {k}")).collect();
        let nodes = self.nodes();
        format!(
            "{} on {nodes} node{}",
            kinds.join(" + "),
            if nodes == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAVEL: &str = r#"
apiVersion: wsched.dev/v1
kind: Cluster
metadata:
  name: gavel-108
spec:
  nodeGroups:
    - {nodes: 9, gpusPerNode: 4, gpuKind: V100, memoryPerGpu: 16Gi, network: ib}
    - {nodes: 9, gpusPerNode: 4, gpuKind: P100, memoryPerGpu: 16Gi}
    - {nodes: 9, gpusPerNode: 4, gpuKind: K80, memoryPerGpu: 12Gi}
"#;

    #[test]
    fn a_heterogeneous_description_numbers_nodes_and_gpus_in_file_order() {
        let t = Topology::from_yaml(GAVEL).unwrap();
        assert_eq!((t.name.as_str(), t.gpus(), t.nodes()), ("gavel-108", 108, 27));
        assert_eq!(t.describe(), "36 V100 + 36 P100 + 36 K80 on 27 nodes");
        let specs = t.gpu_specs();
        assert_eq!(specs.len(), 108);
        assert_eq!((specs[0].node, specs[0].kind.as_str()), (0, "V100"));
        assert_eq!((specs[35].node, specs[35].kind.as_str()), (8, "V100"));
        assert_eq!((specs[36].node, specs[36].kind.as_str()), (9, "P100"));
        assert_eq!((specs[107].node, specs[107].memory_total), (26, 12 << 30));
        assert_eq!(t.network_of(0), Some("ib"));
        assert_eq!(t.network_of(9), None);
        assert_eq!(t.network_of(27), None);
    }

    #[test]
    fn the_shorthand_is_one_group_with_the_rest_on_a_last_node() {
        let t = Topology::homogeneous(64, 8, "V100", 16 << 30).unwrap();
        assert_eq!((t.groups().len(), t.gpus(), t.nodes()), (1, 64, 8));
        let t = Topology::homogeneous(10, 4, "V100", 16 << 30).unwrap();
        assert_eq!((t.gpus(), t.nodes()), (10, 3));
        let nodes: Vec<u32> = t.gpu_specs().iter().map(|g| g.node).collect();
        assert_eq!(
            nodes,
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2],
            "as --gpus 10 --gpus-per-node 4 always did"
        );
        assert_eq!(Topology::homogeneous(3, 8, "V100", 1).unwrap().nodes(), 1);
        assert!(Topology::homogeneous(0, 8, "V100", 1).is_err());
        assert!(Topology::homogeneous(MAX_GPUS + 1, 8, "V100", 1).is_err());
        assert!(Topology::homogeneous(8, 0, "V100", 1).is_err());
    }

    fn refused(text: &str) -> String {
        match Topology::from_yaml(text) {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn group(fields: &str) -> String {
        format!("apiVersion: wsched.dev/v1\nkind: Cluster\nspec:\n  nodeGroups:\n    - {{{fields}}}\n")
    }

    #[test]
    fn hostile_descriptions_are_refused_naming_the_field() {
        let ok = "nodes: 2, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 80Gi";
        assert!(Topology::from_yaml(&group(ok)).is_ok());
        for (fields, named) in [
            (
                "nodes: 0, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1Gi",
                "nodeGroups[0].nodes",
            ),
            ("nodes: -1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1Gi", "nodes"),
            (
                "nodes: 1, gpusPerNode: 0, gpuKind: A100, memoryPerGpu: 1Gi",
                "gpusPerNode",
            ),
            (
                "nodes: 1, gpusPerNode: 4096, gpuKind: A100, memoryPerGpu: 1Gi",
                "gpusPerNode",
            ),
            (
                "nodes: 4294967295, gpusPerNode: 1024, gpuKind: A100, memoryPerGpu: 1Gi",
                "more than 65536 GPUs",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: '', memoryPerGpu: 1Gi",
                "gpuKind: required",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: \"a\\nb\", memoryPerGpu: 1Gi",
                "control characters",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 0",
                "memoryPerGpu",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: .nan",
                "memoryPerGpu",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1e300",
                "memoryPerGpu",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 5e-324",
                "memoryPerGpu",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1 parsec",
                "memoryPerGpu",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1Gi, network: ''",
                "network",
            ),
            (
                "nodes: 1, gpusPerNode: 4, gpuKind: A100, memoryPerGpu: 1Gi, speed: 9",
                "unknown field",
            ),
        ] {
            let e = refused(&group(fields));
            assert!(e.contains(named), "{fields}: {e}");
        }
        assert!(refused("apiVersion: wsched.dev/v2\nkind: Cluster\nspec: {nodeGroups: []}\n").contains("apiVersion"));
        assert!(refused("apiVersion: wsched.dev/v1\nkind: Job\nspec: {nodeGroups: []}\n").contains("kind"));
        assert!(refused("apiVersion: wsched.dev/v1\nkind: Cluster\nspec: {nodeGroups: []}\n").contains("at least one"));
        assert!(refused("not: [yaml").contains("cluster description"));
        // A 10 MB name is refused without being repeated whole.
        let huge = "K".repeat(10 << 20);
        let e = refused(&group(&format!(
            "nodes: 1, gpusPerNode: 4, gpuKind: {huge}, memoryPerGpu: 1Gi"
        )));
        assert!(e.contains("gpuKind") && e.len() < 400, "{} bytes", e.len());
        let e = refused(&group(&format!(
            "nodes: 1, gpusPerNode: 4, gpuKind: A, memoryPerGpu: 1Gi, {huge}: 1"
        )));
        assert!(e.len() < 400, "{} bytes", e.len());
        // Too many groups.
        let many = "    - {nodes: 1, gpusPerNode: 1, gpuKind: A, memoryPerGpu: 1}\n".repeat(MAX_GROUPS + 1);
        let e = refused(&format!(
            "apiVersion: wsched.dev/v1\nkind: Cluster\nspec:\n  nodeGroups:\n{many}"
        ));
        assert!(e.contains("groups"), "{e}");
    }

    #[test]
    fn an_alibaba_node_list_is_a_cluster() {
        let list = "sn,cpu_milli,memory_mib,gpu,model\n\
                    node-0227,32000,262144,0,nan\n\
                    node-0228,128000,786432,8,G3\n\
                    node-0229,96000,786432,8,V100M32\n\
                    node-0230,128000,786432,8,G3\n\
                    node-0231,96000,393216,2,T4\n";
        let t = Topology::from_pai_node_list("openb_node_list_gpu_node.csv", list).unwrap();
        assert_eq!(t.name, "openb_node_list_gpu_node");
        assert_eq!(t.describe(), "16 G3 + 8 V100M32 + 2 T4 on 4 nodes");
        assert_eq!(t.groups()[1].memory_per_gpu, 32 << 30);
        assert_eq!(t.groups()[0].memory_per_gpu, UNKNOWN_MEMORY);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.csv");
        std::fs::write(&path, list).unwrap();
        assert_eq!(Topology::read(&path).unwrap().gpus(), 26);
        let bad = |rows: &str| {
            Topology::from_pai_node_list("n.csv", &format!("sn,gpu,model\n{rows}"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("a,8.5,G3\n").contains("n.csv:2: column `gpu`"));
        assert!(bad("a,-1,G3\n").contains("n.csv:2: column `gpu`"));
        assert!(bad("a,4096,G3\n").contains("n.csv:2: column `gpu`"));
        assert!(bad("a,8\n").contains("n.csv:2: 2 fields"));
        assert!(bad("a,8,\n").contains("n.csv:2: column `model`: required"));
        assert!(bad("a,0,nan\n").contains("no node with GPUs"));
        assert!(bad(&"a,1024,G3\n".repeat(65)).contains("more than 65536 GPUs"));
        assert!(
            Topology::from_pai_node_list("n.csv", "sn,model\na,G3\n")
                .unwrap_err()
                .to_string()
                .contains("no `gpu` column")
        );
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, GAVEL).unwrap();
        assert_eq!(Topology::read(&path).unwrap().gpus(), 108);
        assert!(matches!(Topology::read(dir.path()), Err(TopologyError::Read { .. })));
        assert!(matches!(
            Topology::read(Path::new("/dev/zero")),
            Err(TopologyError::Read { .. })
        ));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(Topology::read(&path), Err(TopologyError::Read { .. })));
    }
}
