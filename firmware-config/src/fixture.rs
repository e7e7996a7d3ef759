//! Builders for fixture sysfs trees, so that discovery and mapping are tested on machines we
//! do not have (two sockets with SMT, isolated cores, offline CPUs, partitioned disks).
//!
//! The tree mirrors the live layout under a root directory: `sys/devices/system/cpu`,
//! `sys/devices/system/node`, `sys/dev/block`. Pass the same root to
//! [`Topology::discover_at`](crate::Topology::discover_at) and
//! [`BlockDevice::discover_at`](crate::BlockDevice::discover_at).

use std::io;
use std::path::{Path, PathBuf};

/// A fixture sysfs tree under a root directory that the caller owns (a temporary directory).
#[derive(Debug, Clone)]
pub struct SysfsFixture {
    root: PathBuf,
}

impl SysfsFixture {
    /// An empty tree under `root`.
    pub fn new(root: &Path) -> Self {
        SysfsFixture {
            root: root.to_owned(),
        }
    }

    /// A symmetric machine with Linux's usual numbering: first thread of every core on every
    /// socket, then the second threads, and so on; one NUMA node per socket with 64 GiB each.
    pub fn symmetric(
        root: &Path,
        sockets: u32,
        cores_per_socket: u32,
        threads_per_core: u32,
    ) -> io::Result<Self> {
        let fixture = SysfsFixture::new(root);
        let cores = sockets * cores_per_socket;
        let cpu_count = cores * threads_per_core;
        for cpu in 0..cpu_count {
            let core = cpu % cores;
            let socket = core / cores_per_socket;
            let siblings: Vec<String> = (0..threads_per_core)
                .map(|t| (t * cores + core).to_string())
                .collect();
            fixture.add_cpu(cpu, socket, core % cores_per_socket, &siblings.join(","))?;
        }
        fixture.set_online(&format!("0-{}", cpu_count - 1))?;
        for socket in 0..sockets {
            let first = socket * cores_per_socket;
            let last = first + cores_per_socket - 1;
            let list: Vec<String> = (0..threads_per_core)
                .map(|t| format!("{}-{}", t * cores + first, t * cores + last))
                .collect();
            fixture.add_node(socket, &list.join(","), 64 << 20)?;
        }
        fixture.set_nodes_online(&format!("0-{}", sockets - 1))?;
        fixture.set_isolated("")?;
        Ok(fixture)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds CPU `id` with its socket, core id and sibling list (cpulist format).
    pub fn add_cpu(&self, id: u32, package: u32, core_id: u32, siblings: &str) -> io::Result<()> {
        let dir = self.cpu_dir().join(format!("cpu{id}/topology"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("physical_package_id"), format!("{package}\n"))?;
        std::fs::write(dir.join("core_id"), format!("{core_id}\n"))?;
        std::fs::write(dir.join("thread_siblings_list"), format!("{siblings}\n"))?;
        std::fs::write(dir.join("core_cpus_list"), format!("{siblings}\n"))
    }

    /// Adds NUMA node `id` with its CPUs and memory in KiB.
    pub fn add_node(&self, id: u32, cpus: &str, memory_kib: u64) -> io::Result<()> {
        let dir = self.node_dir().join(format!("node{id}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cpulist"), format!("{cpus}\n"))?;
        std::fs::write(
            dir.join("meminfo"),
            format!(
                "Node {id} MemTotal:       {memory_kib} kB\nNode {id} MemFree:        {memory_kib} kB\n"
            ),
        )
    }

    /// Writes `cpu/online`.
    pub fn set_online(&self, list: &str) -> io::Result<()> {
        self.write_cpu_file("online", list)
    }

    /// Writes `cpu/isolated`.
    pub fn set_isolated(&self, list: &str) -> io::Result<()> {
        self.write_cpu_file("isolated", list)
    }

    /// Writes `cpu/nohz_full`.
    pub fn set_nohz_full(&self, list: &str) -> io::Result<()> {
        self.write_cpu_file("nohz_full", list)
    }

    /// Writes `node/online`.
    pub fn set_nodes_online(&self, list: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.node_dir())?;
        std::fs::write(self.node_dir().join("online"), format!("{list}\n"))
    }

    /// Adds a whole-disk block device `major:minor` with its sector sizes; returns its sysfs
    /// directory.
    pub fn add_disk(
        &self,
        major: u32,
        minor: u32,
        name: &str,
        logical_sector_bytes: u32,
        physical_sector_bytes: u32,
    ) -> io::Result<PathBuf> {
        let device = self.root.join(format!("sys/devices/virtual/block/{name}"));
        let queue = device.join("queue");
        std::fs::create_dir_all(&queue)?;
        std::fs::write(
            queue.join("logical_block_size"),
            format!("{logical_sector_bytes}\n"),
        )?;
        std::fs::write(
            queue.join("physical_block_size"),
            format!("{physical_sector_bytes}\n"),
        )?;
        std::fs::write(device.join("dev"), format!("{major}:{minor}\n"))?;
        self.link_dev(major, minor, &device)?;
        Ok(device)
    }

    /// Adds partition `major:minor` named `name` of the disk at `disk_dir` (from
    /// [`add_disk`](Self::add_disk)), laid out as the kernel does: a subdirectory of the disk
    /// with a `partition` file and no `queue/`.
    pub fn add_partition(
        &self,
        disk_dir: &Path,
        major: u32,
        minor: u32,
        name: &str,
    ) -> io::Result<PathBuf> {
        let device = disk_dir.join(name);
        std::fs::create_dir_all(&device)?;
        std::fs::write(device.join("partition"), "1\n")?;
        std::fs::write(device.join("dev"), format!("{major}:{minor}\n"))?;
        self.link_dev(major, minor, &device)?;
        Ok(device)
    }

    fn link_dev(&self, major: u32, minor: u32, device: &Path) -> io::Result<()> {
        let dev_block = self.root.join("sys/dev/block");
        std::fs::create_dir_all(&dev_block)?;
        std::os::unix::fs::symlink(device, dev_block.join(format!("{major}:{minor}")))
    }

    fn write_cpu_file(&self, name: &str, list: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.cpu_dir())?;
        std::fs::write(self.cpu_dir().join(name), format!("{list}\n"))
    }

    fn cpu_dir(&self) -> PathBuf {
        self.root.join("sys/devices/system/cpu")
    }

    fn node_dir(&self) -> PathBuf {
        self.root.join("sys/devices/system/node")
    }
}
