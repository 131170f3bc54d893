//! A read-only mapping of a segment file, read by copying out of it.
//!
//! A `pread` per get cost more than the rest of the get together (the syscall, the page
//! cache lookup and the kernel's copy: 2.1 against 0.9 µs per get in one thread). Copying
//! out of a mapping reads the same page cache pages with none of that.
//!
//! A mapped page that cannot be read (an I/O error, or a file cut short under us) raises
//! SIGBUS, which would kill the node. So a copy out of a mapping marks its range in a
//! thread-local first, and a SIGBUS handler that finds the faulting address in the range
//! puts a zero page there, notes the fault and lets the copy finish; the copy then reports
//! it, the segment stops using its mapping, and the caller reads with `pread`, which
//! returns the real error. Any other SIGBUS goes on to the handler installed before ours.

use nix::libc::{c_int, c_void, siginfo_t};
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::cell::Cell;
use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

pub(super) struct Mapping {
    base: NonNull<c_void>,
    len: usize,
    /// A page faulted once: every later read goes through `pread`.
    faulted: AtomicBool,
}

// The mapping is read-only and only ever read by copying out of it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

thread_local! {
    /// The bytes this thread is copying out of a mapping, `[start, end)`.
    static COPYING: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Set by the SIGBUS handler when it zeroed a page of `COPYING`.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();
static PREVIOUS: OnceLock<SigAction> = OnceLock::new();
/// Read once before the handler is installed: sysconf is not async-signal-safe.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

impl Mapping {
    /// Maps the first `len` bytes of `file`, which may be longer than the file is yet: a
    /// segment being appended to is mapped once at its full size, and only bytes already
    /// written are ever read.
    pub(super) fn new(file: &File, len: u64) -> std::io::Result<Mapping> {
        INSTALL.call_once(install_handler);
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let length =
            NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("nothing to map"))?;
        // SAFETY: a fresh shared read-only mapping; it is only read by `read` below.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }?;
        Ok(Mapping {
            base,
            len,
            faulted: AtomicBool::new(false),
        })
    }

    /// A copy of `len` bytes at `offset`; `None` when they lie outside the mapping or a
    /// page of them could not be read (then `pread` reports why).
    pub(super) fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut copy = Vec::with_capacity(len);
        // SAFETY: the vector has room for `len` bytes, all of which a success wrote.
        unsafe {
            self.copy_out(offset, copy.as_mut_ptr(), len)?;
            copy.set_len(len);
        }
        Some(copy)
    }

    /// `read` into `out`, which it fills.
    pub(super) fn read_into(&self, offset: u64, out: &mut [u8]) -> Option<()> {
        // SAFETY: `out` has room for its length.
        unsafe { self.copy_out(offset, out.as_mut_ptr(), out.len()) }
    }

    /// # Safety
    /// `dest` must be valid for writes of `len` bytes.
    unsafe fn copy_out(&self, offset: u64, dest: *mut u8, len: usize) -> Option<()> {
        let offset = usize::try_from(offset).ok()?;
        if offset.checked_add(len)? > self.len || self.has_faulted() {
            return None;
        }
        // SAFETY: the range is inside the mapping, which lives as long as `self`; a page of
        // it that cannot be read is replaced by the handler before the copy resumes.
        unsafe {
            let source = self.base.as_ptr().cast::<u8>().add(offset);
            COPYING.set((source as usize, source as usize + len));
            compiler_fence(Ordering::SeqCst);
            std::ptr::copy_nonoverlapping(source, dest, len);
            compiler_fence(Ordering::SeqCst);
            COPYING.set((0, 0));
        }
        if FAULTED.replace(false) {
            self.faulted.store(true, Ordering::Relaxed);
            return None;
        }
        Some(())
    }

    /// Whether a read found an unreadable page, so reads no longer use the mapping.
    pub(super) fn has_faulted(&self) -> bool {
        self.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; no copy is running (`&mut self`).
        if let Err(err) = unsafe { munmap(self.base, self.len) } {
            log::warn!("cannot unmap a segment: {err}");
        }
    }
}

fn install_handler() {
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
    if let Ok(Some(size)) = page_size {
        PAGE_SIZE.store(size as usize, Ordering::Relaxed);
    }
    let ours = SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads thread-locals, calls mmap and sigaction, and chains.
    match unsafe { sigaction(Signal::SIGBUS, &ours) } {
        Ok(previous) => {
            let _ = PREVIOUS.set(previous);
        }
        Err(err) => log::warn!("cannot install the SIGBUS handler for mapped reads: {err}"),
    }
}

extern "C" fn on_sigbus(signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let (start, end) = COPYING.get();
    if (start..end).contains(&address) {
        let page_size = PAGE_SIZE.load(Ordering::Relaxed);
        let page = address & !(page_size - 1);
        let zeroed = NonZeroUsize::new(page).zip(NonZeroUsize::new(page_size));
        if let Some((page, size)) = zeroed {
            // SAFETY: the page lies in a mapping of ours; a private zero page replaces it.
            let replaced = unsafe {
                mmap_anonymous(
                    Some(page),
                    size,
                    ProtFlags::PROT_READ,
                    MapFlags::MAP_FIXED | MapFlags::MAP_PRIVATE,
                )
            };
            if replaced.is_ok() {
                FAULTED.set(true);
                return;
            }
        }
    }
    match PREVIOUS.get().map(SigAction::handler) {
        // SAFETY: the handler that was installed before ours, called as the kernel would.
        Some(SigHandler::SigAction(previous)) => previous(signal, info, context),
        Some(SigHandler::Handler(previous)) => previous(signal),
        _ => {
            // The default action: die of this SIGBUS once the instruction runs again.
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: restoring the default disposition.
            let _ = unsafe { sigaction(Signal::SIGBUS, &default) };
        }
    }
}
