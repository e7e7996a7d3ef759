//! `ThreadMapping`: which physical core runs which LEU.
//!
//! Rules, in order (docs/ARCHITECTURE.md gives the reasons):
//!
//! 1. One LEU per physical core, on one of its SMT siblings; the other siblings stay idle so
//!    that the LEU has the core's caches and execution units to itself.
//! 2. An explicit `leu.cores` list is taken as written, after checking that every CPU exists,
//!    is online, appears once, and does not share a physical core with another listed CPU.
//! 3. Otherwise cores are ranked: isolated cores first (the operator took them away from the
//!    scheduler for us), then by NUMA node (the node with the most isolated cores first, then
//!    by id) so that LEUs pack onto as few nodes as possible and each LEU's memory is local,
//!    then by CPU id. The core of CPU 0 comes last: it is left to the OS, interrupts and the
//!    controlplane unless the LEU count needs it.
//! 4. `auto` runs one LEU per isolated core if the kernel isolates any; otherwise one per
//!    physical core, minus the core of CPU 0 on machines with three cores or more.
//!
//! The plan depends only on the topology and the config, so it is deterministic.

use crate::config::{LeuConfig, LeuCount};
use crate::cpuset::CpuSet;
use crate::error::{Error, InvalidConfig};
use crate::topology::{PhysicalCore, Topology};
use serde::Serialize;

/// With fewer physical cores than this, `auto` uses the core of CPU 0 too: reserving one of
/// two cores would halve a small machine's throughput.
pub const RESERVE_CORE_ZERO_FROM_CORES: usize = 3;

/// One LEU's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeuAssignment {
    /// The LEU's index, from 0.
    pub leu: u16,
    /// The logical CPU it is pinned to.
    pub cpu: u32,
    /// The socket.
    pub package: u32,
    /// The core id within the socket.
    pub core_id: u32,
    /// The NUMA node its memory should come from.
    pub node: u32,
    /// Whether the kernel isolates this CPU.
    pub isolated: bool,
    /// The core's other SMT siblings, left idle.
    pub idle_siblings: CpuSet,
}

/// The LEU plan for one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadMapping {
    /// LEUs by index.
    pub leus: Vec<LeuAssignment>,
    /// Online CPUs left to the OS, interrupts and the controlplane (neither an LEU nor an
    /// idle sibling of one). May be empty on small machines.
    pub housekeeping: CpuSet,
}

impl ThreadMapping {
    /// Plans the LEUs for `topology` as `config` asks.
    pub fn plan(topology: &Topology, config: &LeuConfig) -> Result<Self, Error> {
        let chosen = if config.cores.is_empty() {
            choose_automatically(topology, config.count)?
        } else {
            check_explicit(topology, &config.cores)?
        };
        let mut leus = Vec::with_capacity(chosen.len());
        let mut busy = CpuSet::new();
        for (index, cpu_id) in chosen.into_iter().enumerate() {
            let Some(cpu) = topology.cpu(cpu_id) else {
                unreachable_cpu(cpu_id);
                continue;
            };
            let mut idle_siblings = cpu.siblings.clone();
            idle_siblings.remove(cpu_id);
            for id in cpu.siblings.iter() {
                busy.insert(id);
            }
            leus.push(LeuAssignment {
                leu: u16::try_from(index).unwrap_or(u16::MAX),
                cpu: cpu_id,
                package: cpu.package,
                core_id: cpu.core_id,
                node: cpu.node,
                isolated: topology.isolated.contains(cpu_id),
                idle_siblings,
            });
        }
        let housekeeping = topology.online().difference(&busy);
        Ok(ThreadMapping { leus, housekeeping })
    }

    /// Where LEU `leu`'s SQPOLL kernel thread should run: its core's idle SMT sibling, else a
    /// housekeeping CPU (spread round-robin), else nowhere in particular (`None`). Never the
    /// LEU's own CPU: the kernel thread inherits the creating thread's affinity otherwise,
    /// and a polling LEU and a polling kernel thread on one CPU starve each other.
    pub fn sqpoll_cpu(&self, leu: u16) -> Option<u32> {
        let assignment = self.leus.get(usize::from(leu))?;
        if let Some(sibling) = assignment.idle_siblings.first() {
            return Some(sibling);
        }
        let housekeeping = self.housekeeping.as_slice();
        if housekeeping.is_empty() {
            return None;
        }
        Some(housekeeping[usize::from(leu) % housekeeping.len()])
    }

    /// The CPU of each LEU, in LEU order.
    pub fn cpus(&self) -> Vec<u32> {
        self.leus.iter().map(|leu| leu.cpu).collect()
    }
}

/// Both choosers only return online CPU ids; this is the negative space of that promise.
fn unreachable_cpu(cpu: u32) {
    debug_assert!(false, "mapping chose CPU {cpu}, which is not online");
}

fn check_explicit(topology: &Topology, cores: &[u32]) -> Result<Vec<u32>, Error> {
    let online = topology.online();
    let mut seen = CpuSet::new();
    for &cpu in cores {
        let Some(logical) = topology.cpu(cpu) else {
            return Err(InvalidConfig::new(
                "leu.cores",
                format!(
                    "CPU {cpu} does not exist or is offline on this machine; accepted: online CPUs {online}"
                ),
            )
            .into());
        };
        if seen.contains(cpu) {
            return Err(InvalidConfig::new(
                "leu.cores",
                format!("CPU {cpu} is listed twice; give each LEU its own CPU"),
            )
            .into());
        }
        if let Some(sibling) = logical.siblings.iter().find(|id| seen.contains(*id)) {
            return Err(InvalidConfig::new(
                "leu.cores",
                format!(
                    "CPUs {sibling} and {cpu} are SMT siblings of one physical core; list one CPU per core (this core's CPUs: {})",
                    logical.siblings
                ),
            )
            .into());
        }
        seen.insert(cpu);
    }
    Ok(cores.to_vec())
}

fn choose_automatically(topology: &Topology, count: LeuCount) -> Result<Vec<u32>, Error> {
    let core_count = topology.cores.len();
    let isolated_core_count = topology
        .cores
        .iter()
        .filter(|core| is_isolated(topology, core))
        .count();
    let wanted = match count {
        LeuCount::Fixed(wanted) => {
            let wanted = usize::from(wanted);
            if wanted > core_count {
                return Err(InvalidConfig::new(
                    "leu.count",
                    format!(
                        "{wanted} LEUs asked, but this machine has {core_count} physical cores and each LEU needs its own; accepted: 1 to {core_count}, or \"auto\""
                    ),
                )
                .into());
            }
            wanted
        }
        LeuCount::Auto if isolated_core_count > 0 => isolated_core_count,
        LeuCount::Auto if core_count >= RESERVE_CORE_ZERO_FROM_CORES => core_count - 1,
        LeuCount::Auto => core_count,
    };

    // Rank nodes: most isolated cores first, then by id.
    let mut node_ids: Vec<u32> = topology.nodes.iter().map(|node| node.id).collect();
    node_ids.sort_by_key(|&node| {
        let isolated = topology
            .cores
            .iter()
            .filter(|core| core.node == node && is_isolated(topology, core))
            .count();
        (std::cmp::Reverse(isolated), node)
    });
    let node_rank = |node: u32| {
        node_ids
            .iter()
            .position(|&id| id == node)
            .unwrap_or(usize::MAX)
    };
    let cpu_zero_core = topology.cpus.first().map(|cpu| cpu.siblings.clone());

    let mut ranked: Vec<(bool, bool, usize, u32)> = topology
        .cores
        .iter()
        .map(|core| {
            let holds_cpu_zero = cpu_zero_core.as_ref() == Some(&core.cpus);
            let cpu = chosen_sibling(topology, core);
            (
                holds_cpu_zero,
                !is_isolated(topology, core),
                node_rank(core.node),
                cpu,
            )
        })
        .collect();
    ranked.sort_unstable();
    let mut chosen: Vec<(usize, u32)> = ranked
        .into_iter()
        .take(wanted)
        .map(|(_, _, rank, cpu)| (rank, cpu))
        .collect();
    // LEU indices follow node rank, then CPU id, so that neighbouring LEUs share a node.
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|(_, cpu)| cpu).collect())
}

fn is_isolated(topology: &Topology, core: &PhysicalCore) -> bool {
    core.cpus.iter().any(|cpu| topology.isolated.contains(cpu))
}

/// The sibling an LEU runs on: the lowest isolated one if any is isolated, else the lowest.
fn chosen_sibling(topology: &Topology, core: &PhysicalCore) -> u32 {
    core.cpus
        .iter()
        .find(|cpu| topology.isolated.contains(*cpu))
        .or_else(|| core.cpus.first())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::SysfsFixture;

    fn topology(sockets: u32, cores: u32, threads: u32, isolated: &str) -> Topology {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::symmetric(scratch.path(), sockets, cores, threads).unwrap();
        fixture.set_isolated(isolated).unwrap();
        Topology::discover_at(scratch.path()).unwrap()
    }

    fn plan(topology: &Topology, count: LeuCount, cores: &[u32]) -> Result<ThreadMapping, Error> {
        ThreadMapping::plan(
            topology,
            &LeuConfig {
                count,
                cores: cores.to_vec(),
                ..LeuConfig::default()
            },
        )
    }

    fn invalid(result: Result<ThreadMapping, Error>) -> InvalidConfig {
        match result {
            Err(Error::Invalid(invalid)) => invalid,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn one_socket_two_cores_uses_both() {
        let machine = topology(1, 2, 1, "");
        let mapping = plan(&machine, LeuCount::Auto, &[]).unwrap();
        assert_eq!(mapping.cpus(), vec![0, 1]);
        assert!(mapping.housekeeping.is_empty());
        assert_eq!(plan(&machine, LeuCount::Fixed(2), &[]).unwrap(), mapping);
        // One LEU leaves core 0 alone.
        let one = plan(&machine, LeuCount::Fixed(1), &[]).unwrap();
        assert_eq!(one.cpus(), vec![1]);
        assert_eq!(one.housekeeping.to_string(), "0");
        let error = invalid(plan(&machine, LeuCount::Fixed(3), &[]));
        assert_eq!(error.field, "leu.count");
        assert!(error.message.contains("2 physical cores"), "{error}");
    }

    #[test]
    fn two_sockets_sixteen_cores_smt_auto() {
        let machine = topology(2, 16, 2, "");
        let mapping = plan(&machine, LeuCount::Auto, &[]).unwrap();
        // Every physical core but CPU 0's; first threads only; siblings idle.
        assert_eq!(mapping.cpus(), (1..32).collect::<Vec<u32>>());
        for leu in &mapping.leus {
            assert_eq!(leu.node, leu.cpu / 16, "LEU {} on the wrong node", leu.leu);
            assert_eq!(leu.idle_siblings.as_slice(), &[leu.cpu + 32]);
            assert_eq!(leu.package, leu.node);
        }
        assert_eq!(mapping.housekeeping.to_string(), "0,32");
        for (index, leu) in mapping.leus.iter().enumerate() {
            assert_eq!(usize::from(leu.leu), index);
        }
    }

    #[test]
    fn two_sockets_small_count_packs_one_node() {
        let machine = topology(2, 16, 2, "");
        let eight = plan(&machine, LeuCount::Fixed(8), &[]).unwrap();
        assert_eq!(eight.cpus(), (1..=8).collect::<Vec<u32>>());
        assert!(eight.leus.iter().all(|leu| leu.node == 0));
        let twenty = plan(&machine, LeuCount::Fixed(20), &[]).unwrap();
        assert_eq!(
            twenty.cpus(),
            (1..=15).chain(16..=20).collect::<Vec<u32>>(),
            "node 0 fills before node 1"
        );
        // All 32 cores: CPU 0's core is used last, still one thread per core.
        let all = plan(&machine, LeuCount::Fixed(32), &[]).unwrap();
        assert_eq!(all.cpus(), (0..32).collect::<Vec<u32>>());
        assert!(all.housekeeping.is_empty());
        let error = invalid(plan(&machine, LeuCount::Fixed(33), &[]));
        assert!(error.message.contains("32 physical cores"), "{error}");
    }

    #[test]
    fn isolated_cores_come_first() {
        let machine = topology(1, 8, 1, "4-7");
        let auto = plan(&machine, LeuCount::Auto, &[]).unwrap();
        assert_eq!(auto.cpus(), vec![4, 5, 6, 7]);
        assert!(auto.leus.iter().all(|leu| leu.isolated));
        assert_eq!(auto.housekeeping.to_string(), "0-3");
        let six = plan(&machine, LeuCount::Fixed(6), &[]).unwrap();
        let mut cpus = six.cpus();
        cpus.sort_unstable();
        assert_eq!(cpus, vec![1, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn isolated_smt_siblings_pick_the_isolated_thread() {
        // 4 cores x 2 threads: core c is {c, c + 4}; the operator isolated 2-3 and 6-7.
        let machine = topology(1, 4, 2, "2-3,6-7");
        let auto = plan(&machine, LeuCount::Auto, &[]).unwrap();
        assert_eq!(auto.cpus(), vec![2, 3]);
        assert_eq!(auto.leus[0].idle_siblings.to_string(), "6");
    }

    #[test]
    fn isolated_cores_on_the_second_node_rank_that_node_first() {
        let machine = topology(2, 4, 1, "4-5");
        let three = plan(&machine, LeuCount::Fixed(3), &[]).unwrap();
        assert_eq!(
            three.cpus(),
            vec![4, 5, 6],
            "node 1 holds the isolated cores"
        );
        assert!(three.leus.iter().all(|leu| leu.node == 1));
    }

    #[test]
    fn explicit_cores_are_checked() {
        let machine = topology(1, 2, 1, "");
        let mapping = plan(&machine, LeuCount::Auto, &[1, 0]).unwrap();
        assert_eq!(mapping.cpus(), vec![1, 0], "explicit order is LEU order");

        let error = invalid(plan(&machine, LeuCount::Auto, &[0, 7]));
        assert_eq!(error.field, "leu.cores");
        assert!(error.message.contains("CPU 7 does not exist"), "{error}");
        assert!(error.message.contains("online CPUs 0-1"), "{error}");

        let error = invalid(plan(&machine, LeuCount::Auto, &[1, 1]));
        assert!(error.message.contains("listed twice"), "{error}");

        let smt = topology(1, 4, 2, "");
        let error = invalid(plan(&smt, LeuCount::Auto, &[1, 5]));
        assert!(error.message.contains("SMT siblings"), "{error}");
    }

    #[test]
    fn sqpoll_threads_go_to_a_sibling_or_a_housekeeping_cpu() {
        let smt = topology(1, 4, 2, "");
        let mapping = plan(&smt, LeuCount::Fixed(2), &[]).unwrap();
        assert_eq!(mapping.cpus(), vec![1, 2]);
        assert_eq!(mapping.sqpoll_cpu(0), Some(5), "the idle sibling of CPU 1");
        let flat = topology(1, 4, 1, "");
        let mapping = plan(&flat, LeuCount::Fixed(2), &[]).unwrap();
        assert_eq!(mapping.housekeeping.to_string(), "0,3");
        assert_eq!(mapping.sqpoll_cpu(0), Some(0));
        assert_eq!(mapping.sqpoll_cpu(1), Some(3));
        let full = plan(&flat, LeuCount::Fixed(4), &[]).unwrap();
        assert_eq!(full.sqpoll_cpu(0), None, "no CPU to spare");
        assert_eq!(full.sqpoll_cpu(9), None, "no such LEU");
    }

    #[test]
    fn plans_are_deterministic() {
        let machine = topology(2, 16, 2, "3-9,40");
        for count in [LeuCount::Auto, LeuCount::Fixed(5), LeuCount::Fixed(31)] {
            let first = plan(&machine, count, &[]).unwrap();
            let second = plan(&machine, count, &[]).unwrap();
            assert_eq!(first, second);
            let cpus = first.cpus();
            let cores: CpuSet = cpus
                .iter()
                .map(|&cpu| machine.cpu(cpu).unwrap().siblings.first().unwrap())
                .collect();
            assert_eq!(cores.len(), cpus.len(), "two LEUs on one physical core");
        }
    }
}
