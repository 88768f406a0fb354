//! Scatter-gather lists: the raw walk ([`map_sg_by`]) and the safe one
//! ([`map_sg_buffers_by`]) that every pool, tlb and platform shares, and
//! the pool's `map_sg_raw`, `unmap_sg_raw` and `map_sg` over them.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use crate::addr::DmaAddr;
use crate::attrs::Attrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::pool::{Policy, Pool};
use crate::translate::Translate;

use super::{Bouncing, SgEntry};
#[cfg(feature = "alloc")]
use super::{DmaBuffer, MapFailed, Mapping, Owner, RawBuffer};

/// Unmaps every entry of a raw scatter-gather list with `unmap`, in list
/// order, all of them even after one fails; the first error is returned.
/// The one walk behind the pool's, the tlb's and the platform's
/// `unmap_sg_raw`.
pub(crate) fn unmap_sg_by(sg: &[SgEntry], mut unmap: impl FnMut(&SgEntry) -> Result) -> Result {
    let mut first = Ok(());
    for e in sg {
        let r = unmap(e);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Maps every entry of a raw scatter-gather list with `map`, all or
/// nothing: an entry longer than `max_segment` fails the list before any
/// is mapped ([`Error::SegmentTooLong`]); if one entry fails, the ones
/// already mapped are given to `unmap`, in order, and the error returned.
/// Each entry's `dma` is set. The one walk behind the pool's, the tlb's
/// and the platform's `map_sg_raw`.
pub(crate) fn map_sg_by(
    sg: &mut [SgEntry],
    max_segment: usize,
    map: &mut dyn FnMut(&SgEntry) -> Result<DmaAddr>,
    unmap: &mut dyn FnMut(&SgEntry),
) -> Result {
    if let Some((index, e)) = sg.iter().enumerate().find(|(_, e)| e.len > max_segment) {
        return Err(Error::SegmentTooLong {
            index,
            len: e.len,
            max: max_segment,
        });
    }
    for i in 0..sg.len() {
        match map(&sg[i]) {
            Ok(dma) => sg[i].dma = dma,
            Err(err) => {
                sg[..i].iter().for_each(&mut *unmap);
                return Err(err);
            }
        }
    }
    Ok(())
}

impl<P: Policy> Pool<P> {
    /// Maps every entry of a scatter-gather list, all or nothing: if one
    /// entry fails, the ones already mapped are unmapped (without copying
    /// back) and the error is returned. Each entry's `dma` is set.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] for an entry longer than the device's
    /// `max_segment_size`, or the first mapping error.
    ///
    /// # Safety
    /// As [`Pool::map_raw`], for every entry.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        // SAFETY: this function's contract, for every entry.
        let r = unsafe { self.map_sg_with(dev, sg, dir, attrs, Bouncing::IfNeeded) };
        #[cfg(feature = "checker")]
        if r.is_ok() {
            let caller = core::panic::Location::caller();
            for e in sg.iter() {
                let (kind, n) = (crate::checker::MapKind::Sg, sg.len());
                // SAFETY: each entry's original is valid for reads of its
                // length (this function's contract).
                unsafe { self.check_mapped(dev, e.dma, e.cpu, e.len, Some(dir), kind, n, caller) };
            }
        }
        r
    }

    /// [`Pool::map_sg_raw`], each entry mapped as `bouncing` says.
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`].
    pub(crate) unsafe fn map_sg_with<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
        bouncing: Bouncing,
    ) -> Result {
        let r = map_sg_by(
            sg,
            dev.max_segment_size(),
            &mut |e| {
                // SAFETY: the entry's `cpu`, `phys` and `len` carry the raw
                // map's obligations (this function's contract, per entry).
                unsafe { self.map_one(dev, e.phys, e.cpu, e.len, attrs, bouncing) }
            },
            &mut |done| {
                // SAFETY: `done` was mapped by this call and the device has
                // not been told of it yet; its original is still valid (the
                // caller's obligation).
                let undo = unsafe {
                    self.unmap_unchecked(dev, done.dma, done.len, dir, attrs | Attrs::SKIP_CPU_SYNC)
                };
                debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
            },
        );
        if let Err(e @ Error::SegmentTooLong { .. }) = &r {
            self.count_failure(e);
        }
        r
    }

    /// Unmaps every entry of a list mapped by [`Pool::map_sg_raw`].
    ///
    /// A failing entry does not stop the others: every entry is tried, in
    /// list order, and each one that can be unmapped is unmapped (copied
    /// back as its direction says). A failing entry is left as it was: one
    /// refused with [`Error::OutOfBounds`] stays mapped and can still be
    /// unmapped with its own size.
    ///
    /// # Errors
    /// As [`Pool::unmap_raw`]: the error of the first failing entry in list
    /// order. Later failures are counted in the pool's statistics but not
    /// returned.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], for every entry.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let caller = core::panic::Location::caller();
        unmap_sg_by(sg, |e| {
            #[cfg(feature = "checker")]
            {
                let (kind, n) = (crate::checker::MapKind::Sg, sg.len());
                // SAFETY: this entry's original is still valid (this
                // function's contract, per entry).
                unsafe { self.check_release(dev, e.dma, e.len, Some(dir), kind, n, caller) };
            }
            // SAFETY: this entry's original is valid for writes and
            // unreferenced, and the device is done with it (this
            // function's contract, per entry).
            let r = unsafe { self.unmap_unchecked(dev, e.dma, e.len, dir, attrs) };
            #[cfg(feature = "checker")]
            if r.is_ok() {
                crate::checker::released(dev.checker_id(), e.dma);
            }
            r
        })
    }
}

impl<P: Policy> Pool<P> {
    /// Maps several buffers as one scatter-gather list, all or nothing.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error, with every
    /// buffer given back in order; nothing stays mapped.
    #[cfg(feature = "alloc")]
    pub fn map_sg<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        self.map_sg_buffers(dev, buffers, dir, Bouncing::IfNeeded)
    }

    /// [`Pool::map_sg`], each buffer mapped as `bouncing` says.
    #[cfg(feature = "alloc")]
    pub(crate) fn map_sg_buffers<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
        bouncing: Bouncing,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        let r = map_sg_buffers_by(buffers, dev.max_segment_size(), |b| {
            let (phys, direct) = dev.direct(b.ptr().as_ptr(), b.len());
            if direct && bouncing == Bouncing::IfNeeded {
                Ok(Mapping::direct(
                    Owner::Pool(self),
                    b,
                    dev.phys_to_dma(phys),
                    dir,
                ))
            } else {
                self.bounce_buffer(dev, phys, b, dir, Attrs::NONE)
            }
        });
        if let Err(f) = &r {
            if let Error::SegmentTooLong { .. } = f.error {
                self.count_failure(&f.error);
            }
        }
        r
    }
}

/// Maps several buffers as one scatter-gather list with `map_one`, all or
/// nothing: a buffer longer than `max_segment` fails the list before any
/// is mapped ([`Error::SegmentTooLong`]); if one fails, the ones already
/// mapped are unmapped without copying back, and every buffer comes back
/// in order. The one walk behind the pool's, the tlb's and the platform's
/// `map_sg`.
#[cfg(feature = "alloc")]
pub(crate) fn map_sg_buffers_by<'p, B: DmaBuffer, P: Policy>(
    buffers: Vec<B>,
    max_segment: usize,
    mut map_one: impl FnMut(
        RawBuffer<B>,
    ) -> core::result::Result<Mapping<'p, B, P>, (Error, RawBuffer<B>)>,
) -> core::result::Result<Vec<Mapping<'p, B, P>>, MapFailed<Vec<B>>> {
    let mut buffers: Vec<RawBuffer<B>> = buffers.into_iter().map(RawBuffer::new).collect();
    let too_long = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| (i, b.len()))
        .find(|&(_, len)| len > max_segment);
    if let Some((index, len)) = too_long {
        return Err(MapFailed {
            error: Error::SegmentTooLong {
                index,
                len,
                max: max_segment,
            },
            buffer: buffers.drain(..).map(RawBuffer::into_buffer).collect(),
        });
    }
    let mut maps: Vec<Mapping<'p, B, P>> = Vec::with_capacity(buffers.len());
    let mut rest = buffers.into_iter();
    while let Some(b) = rest.next() {
        match map_one(b) {
            Ok(m) => maps.push(m),
            Err((error, failed)) => {
                let mut back: Vec<B> = maps
                    .into_iter()
                    .map(|m| m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC))
                    .collect();
                back.push(failed.into_buffer());
                back.extend(rest.map(RawBuffer::into_buffer));
                return Err(MapFailed {
                    error,
                    buffer: back,
                });
            }
        }
    }
    Ok(maps)
}
