//! Guest memory copies with a fast path: one region lookup and one volatile copy when the
//! range lies in a single region of plain (non-IOMMU) memory; vm-memory's general
//! `read_slice`/`write_slice` otherwise. Both are vm-memory's safe API.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

/// Fills `buf` from guest memory at `addr`.
pub(crate) fn read<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    buf: &mut [u8],
) -> Result<(), ()> {
    if let Some(pm) = mem.physical_memory()
        && let Ok(s) = pm.get_slice(addr, buf.len())
        && s.copy_to(buf) == buf.len()
    {
        return Ok(());
    }
    mem.read_slice(buf, addr).map_err(|_| ())
}

/// Writes `buf` to guest memory at `addr`.
pub(crate) fn write<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    buf: &[u8],
) -> Result<(), ()> {
    if let Some(pm) = mem.physical_memory()
        && let Ok(s) = pm.get_slice(addr, buf.len())
        && s.len() == buf.len()
    {
        s.copy_from(buf);
        return Ok(());
    }
    mem.write_slice(buf, addr).map_err(|_| ())
}
