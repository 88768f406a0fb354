//! The future of [`IoTlb::map_async`].

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use alloc::sync::Arc;

use super::queue::{Now, Phase, Sink, TicketInner};
use super::{IoTlb, Placed};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::map::{Bouncing, Owner};
use crate::map::{DmaBuffer, MapFailed, MapOptions, Mapping, RawBuffer};
use crate::pool::{Bounce, Policy};
use crate::sync::Ordering;
use crate::translate::Translate;

/// The future of [`IoTlb::map_async`]. It holds the buffer taken apart
/// (see [`DmaBuffer`]), so that a queued request's copy from it stays
/// valid however the future moves.
pub struct MapFuture<'t, B: DmaBuffer, T, P: Policy> {
    tlb: &'t IoTlb<P>,
    device: Device<T>,
    buffer: Option<RawBuffer<B>>,
    dir: Direction,
    ticket: Option<Arc<TicketInner>>,
}

impl<'t, B, T, P> MapFuture<'t, B, T, P>
where
    B: DmaBuffer,
    P: Policy,
{
    pub(crate) fn new(
        tlb: &'t IoTlb<P>,
        device: Device<T>,
        buffer: RawBuffer<B>,
        dir: Direction,
    ) -> Self {
        Self {
            tlb,
            device,
            buffer: Some(buffer),
            dir,
            ticket: None,
        }
    }

    /// Waits for a popped request's outcome: `complete` sets it right
    /// after the pop, without blocking.
    fn outcome(ticket: &TicketInner) -> Option<Result<Bounce>> {
        loop {
            let mut st = ticket.state.lock();
            if st.phase == Phase::Completed {
                return st.outcome.take();
            }
            drop(st);
            core::hint::spin_loop();
        }
    }
}

// The future holds no self-reference: the queued request points into the
// buffer's bytes, which stay put whatever moves (the buffer is taken
// apart), so moving the future between polls is fine.
impl<B, T, P> Unpin for MapFuture<'_, B, T, P>
where
    B: DmaBuffer,
    P: Policy,
{
}

impl<'t, B, T, P> Future for MapFuture<'t, B, T, P>
where
    B: DmaBuffer,
    T: Translate + Clone + Send + Sync + 'static,
    P: Policy,
{
    type Output = core::result::Result<Mapping<'t, B, P>, MapFailed<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let tlb = this.tlb;
        let Some(buffer) = this.buffer.take() else {
            panic!("MapFuture polled after it completed");
        };
        let (ptr, len) = (buffer.ptr(), buffer.len());
        if let Some(ticket) = &this.ticket {
            let mut st = ticket.state.lock();
            if st.phase != Phase::Completed {
                st.waker = Some(cx.waker().clone());
                drop(st);
                this.buffer = Some(buffer);
                return Poll::Pending;
            }
            let r = st.outcome.take().unwrap_or(Err(Error::NoPool));
            drop(st);
            this.ticket = None;
            return Poll::Ready(match r.and_then(|b| tlb.placed(b)) {
                Ok(placed) => Ok(tlb.mapping(placed, buffer, this.dir)),
                Err(error) => Err(MapFailed::new(error, buffer)),
            });
        }
        let d = &this.device;
        let (phys, direct) = d.direct(ptr.as_ptr(), len);
        if direct && tlb.bouncing() == Bouncing::IfNeeded {
            let dma = d.phys_to_dma(phys);
            let m = Mapping::direct(Owner::Tlb(tlb), buffer, dma, this.dir);
            return Poll::Ready(Ok(m));
        }
        let waker = Some(cx.waker().clone());
        let opts = MapOptions::default();
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes and
        // nothing else accesses them while the buffer is taken apart
        // (`DmaBuffer`); `phys` is their physical address. The future holds
        // the parts until the request completes or is cancelled (its drop
        // cancels it, and gives back the slots of a request that completed
        // unseen, before the parts are put back together), and the bytes
        // stay put however the future moves.
        let r = unsafe { tlb.now_or_queue(d, phys, ptr.as_ptr(), len, opts, Sink::Store, waker) };
        match r {
            Ok(Now::Done((bounce, pool, held))) => {
                let placed = Placed { bounce, pool, held };
                return Poll::Ready(Ok(tlb.mapping(placed, buffer, this.dir)));
            }
            Ok(Now::Queued(ticket)) => {
                this.buffer = Some(buffer);
                this.ticket = Some(ticket);
            }
            Err(error) => return Poll::Ready(Err(MapFailed::new(error, buffer))),
        }
        // It may have completed while queuing: its waker was woken, so
        // the next poll sees it.
        Poll::Pending
    }
}

impl<B: DmaBuffer, T, P: Policy> Drop for MapFuture<'_, B, T, P> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if self.tlb.cancel_inner(&ticket) {
            self.tlb.qcounters.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Completed, unseen: give its slots back so nothing is lost.
        if let Some(Ok(b)) = Self::outcome(&ticket) {
            self.tlb.give_back(&b);
            self.tlb.serve_if_queued();
        }
        // The buffer field drops after this, put back together: no queued
        // copy can reach it any more.
    }
}
