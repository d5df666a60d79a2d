//! Memory that a loader fills in one go: files mapped with their pages already present, and
//! large buffers backed by the kernel before the first write. A fresh 7 MB buffer written page
//! by page takes ~1800 page faults, which cost more than the copy itself; asked for up front it
//! is one system call.
//!
//! No huge pages: a load into fresh memory that the kernel backs with a 2 MiB page takes ~7 ms
//! instead of ~3 ms on a KVM guest (the page is zeroed, and backed by the host, whole), which
//! put the adapter cold load's p99 past its 5 ms target, while the decode with 100 adapters
//! read through them no faster (bench/RESULTS.md, issue 18). So the buffers ask for 4 KiB
//! pages (`MADV_NOHUGEPAGE`), which matters where transparent huge pages are `always`.

use std::fs::File;

/// Buffers smaller than this are left to the allocator as they are: they mostly reuse memory
/// the heap already holds, where the advice would be a system call for nothing.
const ADVISE_MIN_BYTES: usize = 2 << 20;

/// Maps `file` read-only with every page present (no fault on first read).
pub(crate) fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is only ever read, as bytes. The files mapped here (adapter weights)
    // are written once and moved into place whole (`AdapterSource` renames a staging
    // directory; hf-hub renames finished downloads); none is written in place. If another
    // process truncated one while it is mapped, a read past the new end would raise SIGBUS,
    // as it would for candle's own mapped model files.
    unsafe { memmap2::MmapOptions::new().populate().map(file) }
}

/// An empty `Vec` with room for `len` elements whose pages the kernel has already backed, so
/// that filling it takes no page fault per 4 KiB. Pages a previous user of the same heap memory
/// left in place stay as they are.
pub(crate) fn prefaulted<T>(len: usize) -> Vec<T> {
    let mut buffer: Vec<T> = Vec::with_capacity(len);
    let bytes = len * size_of::<T>();
    if bytes >= ADVISE_MIN_BYTES {
        advise_fill_soon(buffer.as_mut_ptr().cast(), bytes);
    }
    buffer
}

/// Asks the kernel to back the whole pages of `bytes` at `start` (memory this process owns and
/// is about to write all of) now, in one call.
#[cfg(target_os = "linux")]
fn advise_fill_soon(start: *mut u8, bytes: usize) {
    let page = 4096;
    let first = (start as usize).next_multiple_of(page);
    let end = (start as usize + bytes) / page * page;
    if end <= first {
        return;
    }
    for advice in [libc::MADV_NOHUGEPAGE, libc::MADV_POPULATE_WRITE] {
        // SAFETY: [first, end) is whole pages inside an allocation of this process. Neither
        // advice changes what the memory holds: MADV_NOHUGEPAGE keeps the range in 4 KiB pages
        // (where transparent huge pages are `always`, new ones would be 2 MiB), and
        // MADV_POPULATE_WRITE backs its pages as a write would (zero for new pages, unchanged
        // for present ones). Both are hints: a kernel that refuses one (POPULATE_WRITE is 5.14+)
        // leaves a buffer that works the same.
        let _ = unsafe { libc::madvise(first as *mut libc::c_void, end - first, advice) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_fill_soon(_start: *mut u8, _bytes: usize) {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_mapped_file_reads_as_its_bytes() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"adapter weights").unwrap();
        assert_eq!(&map_file(&file).unwrap()[..], b"adapter weights");
        let empty = tempfile::tempfile().unwrap();
        assert!(map_file(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_prefaulted_buffer_holds_what_is_written() {
        for len in [0, 10, (3 << 20) + 5] {
            let mut buffer = prefaulted::<f32>(len);
            assert!(buffer.is_empty() && buffer.capacity() >= len);
            buffer.extend((0..len).map(|i| i as f32));
            assert!(buffer.iter().enumerate().all(|(i, &v)| v == i as f32), "len {len}");
        }
    }
}
