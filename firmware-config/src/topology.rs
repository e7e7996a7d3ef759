//! CPU and NUMA topology, read from sysfs.
//!
//! Everything is read under a root directory (`/` on a live machine, a fixture tree in tests),
//! from the same files the kernel documents in `Documentation/ABI/stable/sysfs-devices-system-cpu`
//! and `sysfs-devices-node`. The `libnuma` C library is not used: it cannot be pointed at a
//! fixture tree, and everything it would tell us is in these files.
//!
//! A physical core is identified by its SMT sibling set (`thread_siblings_list`), which stays
//! unique on multi-die packages where `core_id` alone repeats.

use crate::cpuset::CpuSet;
use crate::error::Error;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Files larger than this are not sysfs attributes; refuse rather than read them whole.
const SYSFS_FILE_SIZE_MAX_BYTES: u64 = 64 * 1024;

/// One online logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogicalCpu {
    /// The kernel's CPU id.
    pub id: u32,
    /// `physical_package_id`: the socket.
    pub package: u32,
    /// `core_id` within the package.
    pub core_id: u32,
    /// The NUMA node whose memory is local to this CPU.
    pub node: u32,
    /// Online CPUs sharing this CPU's physical core, itself included.
    pub siblings: CpuSet,
}

/// One physical core: a set of SMT siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhysicalCore {
    /// The socket.
    pub package: u32,
    /// `core_id` within the package.
    pub core_id: u32,
    /// The NUMA node.
    pub node: u32,
    /// Its online logical CPUs (SMT siblings), sorted; never empty.
    pub cpus: CpuSet,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// The node id.
    pub id: u32,
    /// Its online CPUs.
    pub cpus: CpuSet,
    /// Its memory, from `node<N>/meminfo`, when the kernel reports it.
    pub memory_total_bytes: Option<u64>,
}

/// The machine's CPUs as the scheduler sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Online logical CPUs, by id.
    pub cpus: Vec<LogicalCpu>,
    /// Physical cores, ordered by their lowest CPU id.
    pub cores: Vec<PhysicalCore>,
    /// NUMA nodes, by id. A kernel without NUMA support reports one node 0.
    pub nodes: Vec<NumaNode>,
    /// CPUs the kernel keeps the scheduler off (`isolcpus=`), among the online ones.
    pub isolated: CpuSet,
    /// CPUs in adaptive-tick mode (`nohz_full=`), among the online ones.
    pub nohz_full: CpuSet,
}

impl Topology {
    /// Discovers the live machine's topology.
    pub fn discover() -> Result<Self, Error> {
        Self::discover_at(Path::new("/"))
    }

    /// Discovers the topology of the sysfs tree under `root` (`root/sys/devices/system/...`).
    pub fn discover_at(root: &Path) -> Result<Self, Error> {
        let cpu_dir = root.join("sys/devices/system/cpu");
        let online = read_cpu_list(&cpu_dir.join("online"))?;
        if online.is_empty() {
            return Err(Error::Discovery {
                path: cpu_dir.join("online"),
                detail: "no online CPU".to_owned(),
            });
        }
        let nodes = discover_nodes(root, &online)?;
        let mut cpus = Vec::with_capacity(online.len());
        for id in online.iter() {
            let topology_dir = cpu_dir.join(format!("cpu{id}/topology"));
            let package = read_number(&topology_dir.join("physical_package_id"))?;
            let core_id = read_number(&topology_dir.join("core_id"))?;
            let siblings_path = topology_dir.join("thread_siblings_list");
            let siblings_path = if siblings_path.exists() {
                siblings_path
            } else {
                topology_dir.join("core_cpus_list")
            };
            let mut siblings = read_cpu_list(&siblings_path)?.intersection(&online);
            // Invariant: a CPU is its own sibling, even if a fixture or an odd kernel forgets it.
            siblings.insert(id);
            let node = nodes
                .iter()
                .find(|node| node.cpus.contains(id))
                .map(|node| node.id)
                .ok_or_else(|| Error::Discovery {
                    path: root.join("sys/devices/system/node"),
                    detail: format!("online CPU {id} belongs to no NUMA node"),
                })?;
            cpus.push(LogicalCpu {
                id,
                package: clamp_id(package),
                core_id: clamp_id(core_id),
                node,
                siblings,
            });
        }
        let mut cores: Vec<PhysicalCore> = Vec::new();
        for cpu in &cpus {
            if cores.iter().any(|core| core.cpus == cpu.siblings) {
                continue;
            }
            cores.push(PhysicalCore {
                package: cpu.package,
                core_id: cpu.core_id,
                node: cpu.node,
                cpus: cpu.siblings.clone(),
            });
        }
        cores.sort_by_key(|core| core.cpus.first());
        let isolated = read_optional_cpu_list(&cpu_dir.join("isolated"))?.intersection(&online);
        let nohz_full = read_optional_cpu_list(&cpu_dir.join("nohz_full"))?.intersection(&online);
        Ok(Topology {
            cpus,
            cores,
            nodes,
            isolated,
            nohz_full,
        })
    }

    /// The set of online CPU ids.
    pub fn online(&self) -> CpuSet {
        self.cpus.iter().map(|cpu| cpu.id).collect()
    }

    /// The online CPU with this id.
    pub fn cpu(&self, id: u32) -> Option<&LogicalCpu> {
        self.cpus.iter().find(|cpu| cpu.id == id)
    }

    /// The number of sockets.
    pub fn package_count(&self) -> usize {
        let packages: CpuSet = self.cpus.iter().map(|cpu| cpu.package).collect();
        packages.len()
    }

    /// Logical CPUs per physical core at most (1 without SMT).
    pub fn threads_per_core_max(&self) -> usize {
        self.cores
            .iter()
            .map(|core| core.cpus.len())
            .max()
            .unwrap_or(1)
    }
}

/// sysfs reports an unknown package or core as -1; keep it distinct but unsigned.
fn clamp_id(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn discover_nodes(root: &Path, online: &CpuSet) -> Result<Vec<NumaNode>, Error> {
    let node_dir = root.join("sys/devices/system/node");
    let node_online = node_dir.join("online");
    if !node_online.exists() {
        // A kernel built without NUMA: one node holding every CPU.
        return Ok(vec![NumaNode {
            id: 0,
            cpus: online.clone(),
            memory_total_bytes: None,
        }]);
    }
    let mut nodes = Vec::new();
    for id in read_cpu_list(&node_online)?.iter() {
        let cpus = read_cpu_list(&node_dir.join(format!("node{id}/cpulist")))?.intersection(online);
        let meminfo_path = node_dir.join(format!("node{id}/meminfo"));
        let memory_total_bytes = match read_small(&meminfo_path) {
            Ok(text) => parse_node_mem_total(&text),
            Err(_) => None,
        };
        nodes.push(NumaNode {
            id,
            cpus,
            memory_total_bytes,
        });
    }
    Ok(nodes)
}

/// Reads `MemTotal` from a node's meminfo (`Node 0 MemTotal:   3893464 kB`).
fn parse_node_mem_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

pub(crate) fn read_small(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| discovery_error(path, error))?;
    let mut text = String::new();
    file.take(SYSFS_FILE_SIZE_MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|error| discovery_error(path, error))?;
    Ok(text)
}

fn discovery_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Discovery {
        path: PathBuf::from(path),
        detail: error.to_string(),
    }
}

pub(crate) fn read_number(path: &Path) -> Result<i64, Error> {
    let text = read_small(path)?;
    text.trim()
        .parse()
        .map_err(|_| discovery_error(path, format!("`{}` is not a number", text.trim())))
}

fn read_cpu_list(path: &Path) -> Result<CpuSet, Error> {
    let text = read_small(path)?;
    CpuSet::parse_list(&text).map_err(|detail| discovery_error(path, detail))
}

fn read_optional_cpu_list(path: &Path) -> Result<CpuSet, Error> {
    if path.exists() {
        read_cpu_list(path)
    } else {
        Ok(CpuSet::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::SysfsFixture;

    #[test]
    fn two_sockets_with_smt() {
        let scratch = tempfile::tempdir().unwrap();
        SysfsFixture::symmetric(scratch.path(), 2, 16, 2).unwrap();
        let topology = Topology::discover_at(scratch.path()).unwrap();
        assert_eq!(topology.cpus.len(), 64);
        assert_eq!(topology.cores.len(), 32);
        assert_eq!(topology.nodes.len(), 2);
        assert_eq!(topology.package_count(), 2);
        assert_eq!(topology.threads_per_core_max(), 2);
        // Linux numbering: the second thread of core c on socket s is 32 + 16 s + c.
        assert_eq!(topology.cores[0].cpus.to_string(), "0,32");
        assert_eq!(topology.cores[17].cpus.to_string(), "17,49");
        assert_eq!(topology.cores[17].node, 1);
        assert_eq!(topology.nodes[1].cpus.to_string(), "16-31,48-63");
        assert_eq!(topology.nodes[0].memory_total_bytes, Some(64 << 30));
        assert!(topology.isolated.is_empty());
    }

    #[test]
    fn offline_cpus_are_left_out() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::symmetric(scratch.path(), 1, 4, 2).unwrap();
        fixture.set_online("0-2,4-6").unwrap();
        let topology = Topology::discover_at(scratch.path()).unwrap();
        assert_eq!(topology.online().to_string(), "0-2,4-6");
        // Core 3 is gone entirely; core 3's sibling 7 too.
        assert_eq!(topology.cores.len(), 3);
        assert_eq!(topology.cpu(2).unwrap().siblings.to_string(), "2,6");
    }

    #[test]
    fn missing_node_directory_means_one_node() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::symmetric(scratch.path(), 1, 2, 1).unwrap();
        std::fs::remove_dir_all(fixture.root().join("sys/devices/system/node")).unwrap();
        let topology = Topology::discover_at(scratch.path()).unwrap();
        assert_eq!(topology.nodes.len(), 1);
        assert_eq!(topology.nodes[0].cpus.to_string(), "0-1");
    }

    #[test]
    fn malformed_sysfs_is_a_discovery_error_naming_the_file() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::symmetric(scratch.path(), 1, 2, 1).unwrap();
        let core_id = fixture
            .root()
            .join("sys/devices/system/cpu/cpu1/topology/core_id");
        std::fs::write(&core_id, "banana\n").unwrap();
        let error = Topology::discover_at(scratch.path()).unwrap_err();
        assert!(
            error.to_string().contains("cpu1/topology/core_id"),
            "{error}"
        );
        assert_eq!(error.exit_code(), 1);
        std::fs::remove_file(&core_id).unwrap();
        let error = Topology::discover_at(scratch.path()).unwrap_err();
        assert!(
            error.to_string().contains("cpu1/topology/core_id"),
            "{error}"
        );
    }

    #[test]
    fn isolated_and_nohz_full_are_read() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::symmetric(scratch.path(), 1, 8, 1).unwrap();
        fixture.set_isolated("4-7").unwrap();
        fixture.set_nohz_full("(null)").unwrap();
        let topology = Topology::discover_at(scratch.path()).unwrap();
        assert_eq!(topology.isolated.to_string(), "4-7");
        assert!(topology.nohz_full.is_empty());
    }

    #[test]
    fn live_machine_is_consistent() {
        // Whatever this machine is, its discovery must describe one.
        let topology = Topology::discover().unwrap();
        assert!(!topology.cpus.is_empty());
        let covered: usize = topology.cores.iter().map(|core| core.cpus.len()).sum();
        assert_eq!(
            covered,
            topology.cpus.len(),
            "every CPU in exactly one core"
        );
        let in_nodes: usize = topology.nodes.iter().map(|node| node.cpus.len()).sum();
        assert_eq!(
            in_nodes,
            topology.cpus.len(),
            "every CPU in exactly one node"
        );
    }
}
