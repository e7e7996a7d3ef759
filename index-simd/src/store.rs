//! Read-only arrays that live either in a 64-byte-aligned heap allocation (an index just
//! built) or inside a read-only mapping of an index file (an index loaded by mmap). The
//! index reads both through `&[T]`, so loading a file parses nothing per node.
//!
//! The `unsafe` here is the mapping itself and the view of mapped bytes as `&[T]`; it is
//! sound because `T` is a plain number type (every bit pattern is a value), the view is
//! checked to be aligned and inside the mapping, and the mapping is private and read-only
//! and outlives every view (each view holds an `Arc` of it).
//!
//! A mapped file must not be truncated by another process while it is mapped (the kernel
//! would raise SIGBUS on access): index files are written once, under a new name, and
//! renamed into place, never rewritten.

use aligned_vec::{AVec, ConstAlign};
use std::fs::File;
use std::ops::Deref;
use std::sync::Arc;

/// The alignment of every array: a cache line, and a whole AVX-512 register.
pub const ALIGN_BYTES: usize = 64;

/// A number type whose every bit pattern is a valid value, without padding.
///
/// # Safety
///
/// Implementors must be plain numbers: any bytes are a valid value and every byte of a
/// value is initialised. `Store` views mapped file bytes as `[T]` and `as_bytes` views
/// values as bytes on that promise.
pub unsafe trait Plain: Copy + Default + Send + Sync + std::fmt::Debug + 'static {}
// SAFETY: plain integers and floats: any bit pattern is a value, and there is no padding.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}

/// A read-only mapping of a whole file (`memmap2`, private and read-only), with the file
/// kept open beside it so that a few values can also be read without touching the mapping
/// ([`Store::read_into`]); or a file's bytes from elsewhere ([`Mapping::of_source`]: the
/// storage engine's file system, which may keep them in memory).
#[derive(Debug)]
pub struct Mapping(Source);

#[derive(Debug)]
enum Source {
    File { map: memmap2::Mmap, file: File },
    Other(Box<dyn MappedSource>),
}

/// A whole file's bytes, read in place, from a file system other than this crate's own.
pub trait MappedSource: Send + Sync + std::fmt::Debug {
    /// The bytes; they never change while the source lives.
    fn bytes(&self) -> &[u8];
    /// Reads `out.len()` bytes at `offset` without touching the mapping where the bytes are
    /// a file's (`pread`), or by copying them.
    fn read_at(&self, offset: usize, out: &mut [u8]) -> std::io::Result<()>;
    /// Whether the bytes are a read-only mapping of a file, whose pages may be dropped
    /// (`MADV_DONTNEED`) and read again from the file. Never true for memory the process
    /// owns: dropping its pages would zero it.
    fn is_file_mapping(&self) -> bool;
    /// The offset of the first page the kernel could not read through the mapping (reads
    /// of it saw zeros instead; the storage engine's SIGBUS guard), if any.
    fn lost_page(&self) -> Option<usize> {
        None
    }
}

impl Mapping {
    /// Maps all of `file` read-only. An empty file cannot be mapped.
    pub fn of(file: &File) -> std::io::Result<Mapping> {
        if file.metadata()?.len() == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a private read-only mapping. The files mapped here (SSTables and side-car
        // indexes) are written once, synced and renamed into place before they are mapped,
        // and never written again (a replaced file is a new file; an unlinked one stays
        // readable while mapped), so the bytes do not change under the mapping.
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(file)? };
        Ok(Mapping(Source::File {
            map,
            file: file.try_clone()?,
        }))
    }

    /// The bytes of `source`, read in place.
    pub fn of_source(source: Box<dyn MappedSource>) -> Mapping {
        Mapping(Source::Other(source))
    }

    /// Reads `out.len()` bytes at `offset` from the file (`pread`), not through the
    /// mapping: the bytes do not enter this process's resident set (only the page cache).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.0 {
            Source::File { file, .. } => file.read_exact_at(out, offset as u64),
            Source::Other(source) => source.read_at(offset, out),
        }
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            Source::File { map, .. } => map,
            Source::Other(source) => source.bytes(),
        }
    }

    /// The offset of the first page lost under the mapping ([`MappedSource::lost_page`]);
    /// this crate's own mappings have no guard and report none.
    pub fn lost_page(&self) -> Option<usize> {
        match &self.0 {
            Source::File { .. } => None,
            Source::Other(source) => source.lost_page(),
        }
    }

    /// Whether the bytes are a read-only file mapping (see [`MappedSource::is_file_mapping`]).
    fn is_file_mapping(&self) -> bool {
        match &self.0 {
            Source::File { .. } => true,
            Source::Other(source) => source.is_file_mapping(),
        }
    }
}

/// A read-only array of `T`.
#[derive(Debug)]
pub struct Store<T: Plain> {
    inner: Inner<T>,
}

#[derive(Debug)]
enum Inner<T: Plain> {
    Owned(AVec<T, ConstAlign<ALIGN_BYTES>>),
    Mapped {
        mapping: Arc<Mapping>,
        offset_bytes: usize,
        length: usize,
    },
}

impl<T: Plain> Store<T> {
    /// An owned array holding `values`.
    pub fn owned(values: &[T]) -> Store<T> {
        Store {
            inner: Inner::Owned(AVec::from_slice(ALIGN_BYTES, values)),
        }
    }

    /// An owned array of `length` default values. A large one is given transparent huge
    /// pages where the kernel offers them on request (`madvise` mode), before its memory is
    /// first touched: a search reads rows and links scattered over hundreds of MiB, and
    /// with 4 KiB pages nearly every read also misses the TLB.
    pub fn zeroed(length: usize) -> AVec<T, ConstAlign<ALIGN_BYTES>> {
        let mut values = AVec::<T, ConstAlign<ALIGN_BYTES>>::with_capacity(ALIGN_BYTES, length);
        advise_huge_pages(values.as_mut_ptr().cast(), length * size_of::<T>());
        values.resize(length, T::default());
        values
    }

    /// An owned array taking `values`.
    pub fn from_avec(values: AVec<T, ConstAlign<ALIGN_BYTES>>) -> Store<T> {
        Store {
            inner: Inner::Owned(values),
        }
    }

    /// A view of `length` values at `offset_bytes` into `mapping`, if that range is inside
    /// it and aligned for `T`.
    pub fn mapped(mapping: &Arc<Mapping>, offset_bytes: usize, length: usize) -> Option<Store<T>> {
        let size = length.checked_mul(size_of::<T>())?;
        let end = offset_bytes.checked_add(size)?;
        let address = mapping.bytes().as_ptr() as usize + offset_bytes;
        (end <= mapping.bytes().len() && address.is_multiple_of(align_of::<T>())).then(|| Store {
            inner: Inner::Mapped {
                mapping: Arc::clone(mapping),
                offset_bytes,
                length,
            },
        })
    }

    /// Copies the values `start..start + out.len()` into `out`: from memory for an owned
    /// array, and for a mapped one by a `pread` of the file, so that reading a few values
    /// of a large mapped array (an `i8` index re-ranking its candidates with their `f32`
    /// rows) does not bring the pages around them into the resident set, as touching the
    /// mapping does (a whole page at least; on kernels that cache files in large folios,
    /// the folio). False when the range is outside the array or the read fails.
    pub fn read_into(&self, start: usize, out: &mut [T]) -> bool {
        let Some(end) = start.checked_add(out.len()) else {
            return false;
        };
        match &self.inner {
            Inner::Owned(values) => match values.get(start..end) {
                Some(values) => {
                    out.copy_from_slice(values);
                    true
                }
                None => false,
            },
            Inner::Mapped {
                mapping,
                offset_bytes,
                length,
            } => {
                end <= *length
                    && mapping
                        .read_at(offset_bytes + start * size_of::<T>(), as_bytes_mut(out))
                        .is_ok()
            }
        }
    }

    /// `len` bytes from `offset` bytes after the array's start: for a mapped array they may
    /// run past its end, as far as the mapping goes (the padding of a region whose checksums
    /// cover whole units, see [`RowChecksums`](crate::checksums::RowChecksums)). `None`
    /// outside.
    pub fn bytes_after(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        match &self.inner {
            Inner::Owned(values) => as_bytes(values).get(offset..end),
            Inner::Mapped {
                mapping,
                offset_bytes,
                ..
            } => mapping
                .bytes()
                .get(offset_bytes.checked_add(offset)?..offset_bytes.checked_add(end)?),
        }
    }

    /// [`Store::bytes_after`] copied into `out`, read from the file (`pread`) for a mapped
    /// array (see [`Store::read_into`]). False outside, or when the read fails.
    pub fn read_bytes_after(&self, offset: usize, out: &mut [u8]) -> bool {
        match &self.inner {
            Inner::Owned(_) => match self.bytes_after(offset, out.len()) {
                Some(bytes) => {
                    out.copy_from_slice(bytes);
                    true
                }
                None => false,
            },
            Inner::Mapped {
                mapping,
                offset_bytes,
                ..
            } => offset_bytes.checked_add(offset).is_some_and(|at| {
                at.checked_add(out.len())
                    .is_some_and(|end| end <= mapping.bytes().len())
                    && mapping.read_at(at, out).is_ok()
            }),
        }
    }

    /// For a mapped array: the byte offset, from the array's start, of the first page the
    /// kernel could not read under it ([`Mapping::lost_page`]), if that page is inside it.
    pub fn lost_page(&self) -> Option<usize> {
        match &self.inner {
            Inner::Owned(_) => None,
            Inner::Mapped {
                mapping,
                offset_bytes,
                length,
            } => mapping
                .lost_page()
                .and_then(|lost| lost.checked_sub(*offset_bytes))
                .filter(|&at| at < length * size_of::<T>()),
        }
    }

    /// For a mapped array: the first page lost anywhere in its mapping
    /// ([`Mapping::lost_page`]), inside the array or not (an index's sections share one).
    pub fn mapping_lost_page(&self) -> Option<usize> {
        match &self.inner {
            Inner::Owned(_) => None,
            Inner::Mapped { mapping, .. } => mapping.lost_page(),
        }
    }

    /// Whether the array lives in a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped { .. })
    }

    /// For a mapped array: lets go of the pages of it this process holds (the whole pages
    /// inside its range), so that they leave its resident set; the next read of one faults
    /// it in again from the file (from the page cache, while the kernel keeps it there).
    /// For after a pass that read every row once (an index build over a table's rows):
    /// later only what searches touch comes back (by the kernel's unit: a page, or on
    /// kernels that cache files in large folios, such as 6.18 on ext4 here, the whole folio
    /// around it). The pages are unlocked first, as `madvise` refuses locked ones, and stay
    /// unlocked (under `mlockall(MCL_FUTURE | MCL_ONFAULT)` the rest of the process still
    /// locks what it touches). Nothing for an owned array.
    pub fn release_pages(&self) {
        #[cfg(target_os = "linux")]
        if let Inner::Mapped {
            mapping,
            offset_bytes,
            length,
        } = &self.inner
        {
            if !mapping.is_file_mapping() {
                return;
            }
            const PAGE_BYTES: usize = 4096;
            let base = mapping.bytes().as_ptr() as usize;
            let start = (base + offset_bytes).next_multiple_of(PAGE_BYTES);
            let end = (base + offset_bytes + length * size_of::<T>()) / PAGE_BYTES * PAGE_BYTES;
            if end > start {
                // SAFETY: whole pages inside a private, read-only file mapping that `mapping`
                // keeps alive. `munlock` only unlocks them; `MADV_DONTNEED` drops this
                // process's page-table entries, and as no page of a read-only mapping was
                // ever written (no private copy exists), every later read sees the file's
                // bytes, which never change while mapped (see `Mapping::of`). Slices
                // borrowed from the array stay valid and read the same values.
                unsafe {
                    libc::munlock(start as *const libc::c_void, end - start);
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    }
}

impl<T: Plain> Deref for Store<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        match &self.inner {
            Inner::Owned(values) => values,
            Inner::Mapped {
                mapping,
                offset_bytes,
                length,
            } => {
                // SAFETY: `mapped` checked that the range is inside the mapping and aligned
                // for `T`; `T` is `Plain`, so any bytes are valid values; the mapping is
                // read-only and lives as long as `self` (we hold an `Arc`).
                unsafe {
                    std::slice::from_raw_parts(
                        mapping.bytes().as_ptr().add(*offset_bytes).cast::<T>(),
                        *length,
                    )
                }
            }
        }
    }
}

/// A `Vec` of `length` values from `fill`, with huge pages asked for before it is touched
/// (see [`Store::zeroed`]): for the build's link arrays and the search's visited set.
pub fn huge_vec<T>(length: usize, fill: impl FnMut() -> T) -> Vec<T> {
    let mut values = Vec::<T>::with_capacity(length);
    advise_huge_pages(values.as_mut_ptr().cast(), length * size_of::<T>());
    values.extend(std::iter::repeat_with(fill).take(length));
    values
}

/// Arrays below this size keep ordinary pages (a huge page is 2 MiB).
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// Asks for transparent huge pages over the whole pages inside `[address, address + bytes)`;
/// a refusal (no THP in this kernel, or `never`) changes nothing but speed, so it is ignored.
fn advise_huge_pages(address: *mut u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE_BYTES: usize = 4096;
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        let start = (address as usize).next_multiple_of(PAGE_BYTES);
        let end = (address as usize + bytes) / PAGE_BYTES * PAGE_BYTES;
        if end > start {
            // SAFETY: the range lies inside an allocation this process owns (whole pages
            // only); MADV_HUGEPAGE changes how the kernel backs it, never its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (address, bytes);
    }
}

/// The bytes of a plain array, for checksums and writing.
pub fn as_bytes<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T` is a plain number type without padding; its bytes are initialised, and the
    // view covers exactly the slice's memory for the slice's lifetime.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

/// The bytes of a plain array, to read into.
pub fn as_bytes_mut<T: Plain>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: `T` is a plain number type without padding, so any bytes written are a valid
    // value; the view covers exactly the slice's memory for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), size_of_val(values)) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    /// Resident kB of this process's mapping that holds `address`.
    fn resident_kib_at(address: usize) -> u64 {
        vortex_io::memlock::mapping_resident_kib(address)
            .unwrap()
            .unwrap_or_else(|| panic!("no mapping holds {address:#x}"))
    }

    /// Pages of a mapped array read once leave the resident set when released, locked or
    /// not, and the array still reads the file's values.
    #[test]
    fn released_pages_leave_the_resident_set_and_read_the_same() {
        let values: Vec<f32> = (0..(4 << 20) / 4).map(|i| i as f32 * 0.5).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(as_bytes(&values)).unwrap();
        let mapping = Arc::new(Mapping::of(&file).unwrap());
        let store = Store::<f32>::mapped(&mapping, 0, values.len()).unwrap();
        let address = store.as_ptr() as usize;
        let sum = |store: &Store<f32>| store.iter().map(|&x| f64::from(x)).sum::<f64>();
        let expected = sum(&store);
        for locked in [false, true] {
            let read = sum(&store);
            assert_eq!(read, expected);
            let mut touched = resident_kib_at(address);
            if locked {
                // SAFETY: whole pages of a live mapping; locking changes no contents.
                let result = unsafe { libc::mlock(store.as_ptr().cast(), values.len() * 4) };
                eprintln!(
                    "mlock: {}",
                    if result == 0 {
                        "locked"
                    } else {
                        "refused (limit)"
                    }
                );
                touched = resident_kib_at(address);
            }
            assert!(touched >= 4000, "read every page: {touched} kB resident");
            store.release_pages();
            let released = resident_kib_at(address);
            eprintln!(
                "locked {locked}: {touched} kB resident after reading, {released} after release"
            );
            assert!(released <= 8, "{released} kB still resident");
        }
        assert_eq!(sum(&store), expected, "the values read after a release");
    }
}
