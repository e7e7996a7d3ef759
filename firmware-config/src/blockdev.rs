//! The data directory's block device: sector sizes and Direct I/O alignment.
//!
//! The WAL writes with `O_DIRECT`, so it must know the alignment the kernel demands of buffer
//! addresses and file offsets. Kernels from 6.1 report it per file through
//! `statx(STATX_DIOALIGN)`; older ones do not, and then the device's logical sector size from
//! sysfs is the documented rule. A file system that refuses `O_DIRECT` (tmpfs) is reported as
//! such, so that storage can fall back to buffered writes with `fdatasync`.

use crate::error::Error;
use crate::topology::{read_number, read_small};
use serde::Serialize;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `STATX_DIOALIGN` from `<linux/stat.h>` (Linux 6.1).
const STATX_DIOALIGN: u32 = 0x2000;

/// The block device under a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// The kernel's name (`nvme0n1p2`, `vda`).
    pub name: String,
    /// Device number, major part.
    pub major: u32,
    /// Device number, minor part.
    pub minor: u32,
    /// Whether it is a partition; sector sizes then come from its disk.
    pub partition: bool,
    /// The smallest unit the device addresses (`queue/logical_block_size`).
    pub logical_sector_bytes: u32,
    /// The unit the device writes atomically and fastest (`queue/physical_block_size`).
    pub physical_sector_bytes: u32,
}

/// What Direct I/O on the data directory requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirectIoAlignment {
    /// Required alignment of buffer addresses, in bytes (0 when unsupported).
    pub memory_bytes: u32,
    /// Required alignment of file offsets and lengths, in bytes (0 when unsupported).
    pub offset_bytes: u32,
    /// Where the figures came from.
    pub source: DirectIoSource,
}

/// How the Direct I/O alignment was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectIoSource {
    /// `statx(STATX_DIOALIGN)` on a file in the directory.
    Statx,
    /// The device's logical sector size (kernels before 6.1).
    SysfsLogicalSector,
    /// The file system refuses `O_DIRECT`.
    Unsupported,
}

impl DirectIoAlignment {
    /// Whether `O_DIRECT` works here.
    pub fn supported(&self) -> bool {
        self.source != DirectIoSource::Unsupported
    }

    /// Decides the alignment from what the probes saw: the statx answer when the kernel gave
    /// one (`Some((memory, offset))`, zeros meaning "no Direct I/O for this file"), whether an
    /// `O_DIRECT` open succeeded, and the block device if there is one.
    pub fn decide(
        statx: Option<(u32, u32)>,
        direct_open_ok: bool,
        device: Option<&BlockDevice>,
    ) -> Self {
        const UNSUPPORTED: DirectIoAlignment = DirectIoAlignment {
            memory_bytes: 0,
            offset_bytes: 0,
            source: DirectIoSource::Unsupported,
        };
        match statx {
            Some((0, _)) | Some((_, 0)) => UNSUPPORTED,
            Some((memory_bytes, offset_bytes)) => DirectIoAlignment {
                memory_bytes,
                offset_bytes,
                source: DirectIoSource::Statx,
            },
            None if !direct_open_ok => UNSUPPORTED,
            None => {
                // No statx answer: the logical sector size is the rule for both; without a
                // device (an odd file system that still accepted O_DIRECT) assume 4 KiB, which
                // satisfies every sector size in use.
                let sector = device.map_or(4096, |device| device.logical_sector_bytes);
                DirectIoAlignment {
                    memory_bytes: sector,
                    offset_bytes: sector,
                    source: DirectIoSource::SysfsLogicalSector,
                }
            }
        }
    }

    /// Probes `dir` on the live machine: creates a scratch file there, asks statx and tries
    /// an `O_DIRECT` open, then removes the file.
    pub fn probe(dir: &Path, device: Option<&BlockDevice>) -> Result<Self, Error> {
        let probe_path = dir.join(format!(".vortex-dio-probe-{}", std::process::id()));
        std::fs::write(&probe_path, b"").map_err(|error| Error::Discovery {
            path: probe_path.clone(),
            detail: format!("cannot create the Direct I/O probe file: {error}"),
        })?;
        let statx = statx_dio_align(&probe_path);
        let direct_open_ok = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe_path)
            .is_ok();
        let _ = std::fs::remove_file(&probe_path);
        Ok(Self::decide(statx, direct_open_ok, device))
    }
}

/// statx's Direct I/O alignment of `path`: `None` when the kernel does not know
/// `STATX_DIOALIGN`, `Some((memory, offset))` otherwise.
fn statx_dio_align(path: &Path) -> Option<(u32, u32)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut buffer: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and outlives the call; buffer is a writable statx.
    let result = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0,
            STATX_DIOALIGN,
            &mut buffer,
        )
    };
    if result != 0 || buffer.stx_mask & STATX_DIOALIGN == 0 {
        return None;
    }
    Some((buffer.stx_dio_mem_align, buffer.stx_dio_offset_align))
}

impl BlockDevice {
    /// The block device holding `path` on the live machine; `None` for file systems without
    /// one (tmpfs, overlayfs, NFS).
    pub fn for_path(path: &Path) -> Result<Option<Self>, Error> {
        Self::discover_at(Path::new("/"), path)
    }

    /// Like [`for_path`](Self::for_path) with sysfs read under `root`. `path` itself is real:
    /// its device number comes from `stat`.
    pub fn discover_at(root: &Path, path: &Path) -> Result<Option<Self>, Error> {
        let metadata = std::fs::metadata(path).map_err(|error| Error::Discovery {
            path: path.to_owned(),
            detail: error.to_string(),
        })?;
        let device = metadata.dev();
        Self::from_device_number(root, libc::major(device), libc::minor(device))
    }

    /// The block device `major:minor` as sysfs under `root` describes it; `None` for major 0
    /// (anonymous devices: tmpfs, overlayfs, btrfs subvolumes, NFS).
    pub fn from_device_number(root: &Path, major: u32, minor: u32) -> Result<Option<Self>, Error> {
        if major == 0 {
            return Ok(None);
        }
        let link = root.join(format!("sys/dev/block/{major}:{minor}"));
        let device_dir = std::fs::canonicalize(&link).map_err(|error| Error::Discovery {
            path: link.clone(),
            detail: format!("no sysfs entry for block device {major}:{minor}: {error}"),
        })?;
        let name = device_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partition = device_dir.join("partition").exists();
        // A partition has no queue/ of its own: its disk is the parent directory.
        let queue_dir: PathBuf = if partition {
            device_dir.join("../queue")
        } else {
            device_dir.join("queue")
        };
        let logical = read_sector_size(&queue_dir.join("logical_block_size"))?;
        let physical = read_sector_size(&queue_dir.join("physical_block_size"))?;
        Ok(Some(BlockDevice {
            name,
            major,
            minor,
            partition,
            logical_sector_bytes: logical,
            physical_sector_bytes: physical,
        }))
    }
}

fn read_sector_size(path: &Path) -> Result<u32, Error> {
    let value = read_number(path)?;
    match u32::try_from(value) {
        Ok(size) if size.is_power_of_two() && (512..=(1 << 20)).contains(&size) => Ok(size),
        _ => Err(Error::Discovery {
            path: path.to_owned(),
            detail: format!(
                "sector size {} is not a power of two from 512 to 1 MiB",
                read_small(path).unwrap_or_default().trim()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::SysfsFixture;

    fn device(logical: u32) -> BlockDevice {
        BlockDevice {
            name: "vda".to_owned(),
            major: 254,
            minor: 0,
            partition: false,
            logical_sector_bytes: logical,
            physical_sector_bytes: 4096,
        }
    }

    #[test]
    fn whole_disk_sector_sizes() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::new(scratch.path());
        fixture.add_disk(259, 0, "nvme0n1", 512, 4096).unwrap();
        let device = BlockDevice::from_device_number(scratch.path(), 259, 0)
            .unwrap()
            .unwrap();
        assert_eq!(device.name, "nvme0n1");
        assert!(!device.partition);
        assert_eq!(device.logical_sector_bytes, 512);
        assert_eq!(device.physical_sector_bytes, 4096);
    }

    #[test]
    fn partition_reads_its_disk_queue() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::new(scratch.path());
        let disk = fixture.add_disk(259, 0, "nvme0n1", 4096, 4096).unwrap();
        fixture.add_partition(&disk, 259, 2, "nvme0n1p2").unwrap();
        let device = BlockDevice::from_device_number(scratch.path(), 259, 2)
            .unwrap()
            .unwrap();
        assert_eq!(device.name, "nvme0n1p2");
        assert!(device.partition);
        assert_eq!(device.logical_sector_bytes, 4096);
    }

    #[test]
    fn anonymous_device_has_no_block_device() {
        let scratch = tempfile::tempdir().unwrap();
        assert_eq!(
            BlockDevice::from_device_number(scratch.path(), 0, 45).unwrap(),
            None
        );
    }

    #[test]
    fn missing_or_bad_sysfs_entries_are_errors() {
        let scratch = tempfile::tempdir().unwrap();
        let fixture = SysfsFixture::new(scratch.path());
        let error = BlockDevice::from_device_number(scratch.path(), 8, 0).unwrap_err();
        assert!(error.to_string().contains("8:0"), "{error}");
        let disk = fixture.add_disk(8, 16, "sdb", 512, 512).unwrap();
        std::fs::write(disk.join("queue/logical_block_size"), "1000\n").unwrap();
        let error = BlockDevice::from_device_number(scratch.path(), 8, 16).unwrap_err();
        assert!(error.to_string().contains("power of two"), "{error}");
    }

    #[test]
    fn real_path_resolves_through_fixture_by_its_device_number() {
        let scratch = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(scratch.path()).unwrap().dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let fixture = SysfsFixture::new(scratch.path());
        if major == 0 {
            // The scratch directory is on an anonymous device (tmpfs): no block device.
            assert_eq!(
                BlockDevice::discover_at(scratch.path(), scratch.path()).unwrap(),
                None
            );
            return;
        }
        fixture
            .add_disk(major, minor, "fixturedisk", 512, 4096)
            .unwrap();
        let device = BlockDevice::discover_at(scratch.path(), scratch.path())
            .unwrap()
            .unwrap();
        assert_eq!(device.name, "fixturedisk");
    }

    #[test]
    fn alignment_decision_covers_every_source() {
        let statx = DirectIoAlignment::decide(Some((4, 512)), true, Some(&device(4096)));
        assert_eq!((statx.memory_bytes, statx.offset_bytes), (4, 512));
        assert_eq!(statx.source, DirectIoSource::Statx);
        // statx known but zero: this file system has no Direct I/O.
        let refused = DirectIoAlignment::decide(Some((0, 0)), false, Some(&device(512)));
        assert!(!refused.supported());
        // Older kernel: the logical sector size.
        let sysfs = DirectIoAlignment::decide(None, true, Some(&device(512)));
        assert_eq!((sysfs.memory_bytes, sysfs.offset_bytes), (512, 512));
        assert_eq!(sysfs.source, DirectIoSource::SysfsLogicalSector);
        let no_device = DirectIoAlignment::decide(None, true, None);
        assert_eq!(no_device.offset_bytes, 4096);
        let tmpfs = DirectIoAlignment::decide(None, false, None);
        assert_eq!(tmpfs.source, DirectIoSource::Unsupported);
    }

    #[test]
    fn live_probe_of_a_scratch_directory() {
        let scratch = tempfile::tempdir().unwrap();
        let device = BlockDevice::for_path(scratch.path()).unwrap();
        let alignment = DirectIoAlignment::probe(scratch.path(), device.as_ref()).unwrap();
        if alignment.supported() {
            assert!(alignment.offset_bytes.is_power_of_two());
            assert!(alignment.memory_bytes.is_power_of_two());
        }
        // The probe cleans up after itself.
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }
}
