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
use std::os::fd::AsRawFd;
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

/// A read-only mapping of a whole file.
#[derive(Debug)]
pub struct Mapping {
    address: *mut libc::c_void,
    length: usize,
}

// SAFETY: the mapping is read-only and private; nothing writes through it, so shared access
// from any thread is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of `file` read-only. An empty file cannot be mapped.
    pub fn of(file: &File) -> std::io::Result<Mapping> {
        let length = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file larger than the address space"))?;
        if length == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of a file we hold open; the kernel picks
        // the address. Failure is reported as MAP_FAILED and checked below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { address, length })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `address` is a live mapping of `length` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.address.cast::<u8>(), self.length) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `of` mapped; no view outlives `self` (views hold
        // an `Arc<Mapping>`).
        unsafe {
            libc::munmap(self.address, self.length);
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
        (end <= mapping.length && address.is_multiple_of(align_of::<T>())).then(|| Store {
            inner: Inner::Mapped {
                mapping: Arc::clone(mapping),
                offset_bytes,
                length,
            },
        })
    }

    /// Whether the array lives in a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped { .. })
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
