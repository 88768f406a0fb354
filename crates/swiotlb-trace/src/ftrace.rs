//! ftrace text (`trace`, `trace_pipe`) and `trace-cmd report` lines.
//!
//! A line is `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS`. The flags
//! column is absent on older kernels and in `trace-cmd report` without
//! `-l`; `record-tgid` adds `(TGID)` after the PID; task names may hold
//! spaces and dashes, so the line is anchored on `-PID [CPU]`, not on the
//! task.

use crate::addr::{DmaAddr, PhysAddr};
use crate::error::ErrorKind;
use crate::event::{
    Alloc, AllocKind, Bounced, Device, Event, EventKind, Free, FreeKind, Gfp, Map, MapSg, MapSgErr,
    SgCount, Sync, SyncSg, SyncTo, Target, Unmap, UnmapSg,
};
use crate::field::{self, trim, Fields, Key};
use crate::intern::Intern;

/// The header of an event line and the text after `TIMESTAMP: `.
pub(crate) struct Header<'a> {
    pub(crate) pid: u32,
    pub(crate) cpu: u32,
    pub(crate) timestamp_ns: u64,
    pub(crate) rest: &'a [u8],
}

/// `-PID[ (TGID)] [CPU]` ending at `open`, the index of `[`: the PID.
fn pid_before(line: &[u8], open: usize) -> Option<u32> {
    let mut i = open;
    let skip_spaces = |mut i: usize| {
        while i > 0 && line[i - 1] == b' ' {
            i -= 1;
        }
        i
    };
    i = skip_spaces(i);
    if i > 0 && line[i - 1] == b')' {
        let o = memchr::memrchr(b'(', &line[..i - 1])?;
        i = skip_spaces(o);
    }
    let end = i;
    while i > 0 && line[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i == end || i == 0 || line[i - 1] != b'-' {
        return None;
    }
    u32::try_from(field::dec(&line[i..end])?).ok()
}

/// `[CPU]` at `open`: the CPU and the index after `]`.
fn cpu_at(line: &[u8], open: usize) -> Option<(u32, usize)> {
    let digits = line[open + 1..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let close = open + 1 + digits;
    if digits == 0 || line.get(close) != Some(&b']') {
        return None;
    }
    let cpu = u32::try_from(field::dec(&line[open + 1..close])?).ok()?;
    Some((cpu, close + 1))
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    &s[n..]
}

fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s
        .iter()
        .position(|&c| c == b' ' || c == b'\t')
        .unwrap_or(s.len());
    (&s[..n], &s[n..])
}

/// How far into a line `[CPU]` may start: a task name is at most 15
/// bytes (`TASK_COMM_LEN`) padded to 16, a PID at most 7 digits, a TGID
/// column a few more. Bounding the search keeps a hostile line of many `[`
/// linear.
const CPU_WITHIN: usize = 256;

pub(crate) fn header(line: &[u8]) -> Result<Header<'_>, ErrorKind> {
    let head = &line[..line.len().min(CPU_WITHIN)];
    let mut from = 0;
    let (pid, cpu, after) = loop {
        let open = from + memchr::memchr(b'[', &head[from..]).ok_or(ErrorKind::Header)?;
        if let (Some((cpu, after)), Some(pid)) = (cpu_at(line, open), pid_before(line, open)) {
            break (pid, cpu, after);
        }
        from = open + 1;
    };
    let (first, rest) = word(skip_spaces(&line[after..]));
    let (stamp, rest) = match first.strip_suffix(b":").and_then(field::timestamp) {
        Some(ts) => (ts, rest),
        None => {
            // `first` was the flags column.
            let (second, rest) = word(skip_spaces(rest));
            let ts = second
                .strip_suffix(b":")
                .and_then(field::timestamp)
                .ok_or(ErrorKind::Timestamp)?;
            (ts, rest)
        }
    };
    Ok(Header {
        pid,
        cpu,
        timestamp_ns: stamp,
        rest: skip_spaces(rest),
    })
}

/// `EVENT: FIELDS`: the event name, if it is one (an identifier followed
/// by `:`), and its fields. Other text (the function tracer's
/// `func <-caller`) is not an event.
pub(crate) fn event_name(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = memchr::memchr(b':', rest)?;
    let name = &rest[..colon];
    if name.is_empty() || !name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') {
        return None;
    }
    let fields = &rest[colon + 1..];
    let fields = fields.strip_prefix(b" ").unwrap_or(fields);
    Some((name, fields))
}

pub(crate) struct Names<'a> {
    pub(crate) devices: &'a mut Intern,
    pub(crate) gfps: &'a mut Intern,
}

fn device(names: &mut Names<'_>, raw: &[u8]) -> Result<Device, ErrorKind> {
    let s = std::str::from_utf8(raw).map_err(|_| ErrorKind::Device)?;
    Ok(Device(names.devices.get(s)))
}

/// A known event's kind and device, `Ok(None)` for an unknown event.
pub(crate) fn event(
    h: &Header<'_>,
    line: u64,
    name: &[u8],
    fields: &[u8],
    names: &mut Names<'_>,
) -> Result<Option<Event>, ErrorKind> {
    let (device, kind) = match name {
        b"tracing_mark_write" => {
            let text = fields.strip_suffix(b"\n").unwrap_or(fields);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            (
                None,
                EventKind::Marker(String::from_utf8_lossy(text).into_owned()),
            )
        }
        b"swiotlb_bounced" => {
            let body = trim(fields);
            let body = body.strip_prefix(b"dev_name:").ok_or(ErrorKind::Device)?;
            let f = Fields::parse(body)?;
            let forced = match f.last_word {
                Some(b"FORCE") => true,
                Some(b"NORMAL" | b"NO_FORCE") => false,
                _ => return Err(ErrorKind::MissingField("FORCE|NORMAL")),
            };
            let b = Bounced {
                dma_mask: f.hex(Key::DmaMask)?,
                dev_addr: DmaAddr(f.hex(Key::DevAddr)?),
                size: f.dec(Key::Size)?,
                forced,
            };
            (Some(device(names, f.device)?), EventKind::Bounced(b))
        }
        _ => {
            let Some(build) = builder(name) else {
                return Ok(None);
            };
            let f = Fields::parse(fields)?;
            let kind = build(&f, names)?;
            (Some(device(names, f.device)?), kind)
        }
    };
    Ok(Some(Event {
        line,
        timestamp_ns: h.timestamp_ns,
        cpu: h.cpu,
        pid: h.pid,
        device,
        kind,
    }))
}

type Build = fn(&Fields<'_>, &mut Names<'_>) -> Result<EventKind, ErrorKind>;

fn builder(name: &[u8]) -> Option<Build> {
    Some(match name {
        b"dma_map_page" => |f, _| map(f, Target::Page),
        b"dma_map_resource" => |f, _| map(f, Target::Resource),
        b"dma_unmap_page" => |f, _| unmap(f, Target::Page),
        b"dma_unmap_resource" => |f, _| unmap(f, Target::Resource),
        b"dma_map_sg" => |f, _| map_sg(f),
        b"dma_map_sg_err" => |f, _| {
            Ok(EventKind::MapSgErr(MapSgErr {
                dir: f.dir()?,
                phys_addrs: f.list(Key::DmaAddrs, PhysAddr)?,
                err: field::dec_i32(f.req(Key::Err)?).ok_or(ErrorKind::BadField("err"))?,
                attrs: f.attrs()?,
            }))
        },
        b"dma_unmap_sg" => |f, _| {
            Ok(EventKind::UnmapSg(UnmapSg {
                dir: f.dir()?,
                phys_addrs: f.list(Key::PhysAddrs, PhysAddr)?,
                attrs: f.attrs()?,
            }))
        },
        b"dma_sync_single_for_cpu" => |f, _| sync(f, SyncTo::Cpu),
        b"dma_sync_single_for_device" => |f, _| sync(f, SyncTo::Device),
        b"dma_sync_sg_for_cpu" => |f, _| sync_sg(f, SyncTo::Cpu),
        b"dma_sync_sg_for_device" => |f, _| sync_sg(f, SyncTo::Device),
        b"dma_alloc" => |f, n| alloc(f, n, AllocKind::Coherent),
        b"dma_alloc_pages" => |f, n| alloc(f, n, AllocKind::Pages),
        b"dma_alloc_sgt" => |f, n| alloc(f, n, AllocKind::Sgt),
        b"dma_alloc_sgt_err" => |f, n| alloc(f, n, AllocKind::SgtErr),
        b"dma_free" => |f, _| free(f, FreeKind::Coherent),
        b"dma_free_pages" => |f, _| free(f, FreeKind::Pages),
        b"dma_free_sgt" => |f, _| free(f, FreeKind::Sgt),
        _ => return None,
    })
}

fn map(f: &Fields<'_>, target: Target) -> Result<EventKind, ErrorKind> {
    Ok(EventKind::Map(Map {
        target,
        dir: f.dir()?,
        dma_addr: DmaAddr(f.hex(Key::DmaAddr)?),
        size: f.dec(Key::Size)?,
        phys_addr: PhysAddr(f.hex(Key::PhysAddr)?),
        attrs: f.attrs()?,
    }))
}

fn unmap(f: &Fields<'_>, target: Target) -> Result<EventKind, ErrorKind> {
    Ok(EventKind::Unmap(Unmap {
        target,
        dir: f.dir()?,
        dma_addr: DmaAddr(f.hex(Key::DmaAddr)?),
        size: f.dec(Key::Size)?,
        attrs: f.attrs()?,
    }))
}

fn sg_count(f: &Fields<'_>, k: Key) -> Result<Option<SgCount>, ErrorKind> {
    Ok(f.count(k)?.map(|(shown, total)| SgCount { shown, total }))
}

fn map_sg(f: &Fields<'_>) -> Result<EventKind, ErrorKind> {
    let m = MapSg {
        dir: f.dir()?,
        nents: sg_count(f, Key::Nents)?,
        ents: sg_count(f, Key::Ents)?,
        truncated: f.truncated,
        dma_addrs: f.list(Key::DmaAddrs, DmaAddr)?,
        sizes: f.list(Key::Sizes, |s| s)?,
        phys_addrs: f.list(Key::PhysAddrs, PhysAddr)?,
        attrs: f.attrs()?,
    };
    if m.dma_addrs.len() != m.sizes.len() {
        return Err(ErrorKind::ListLength("sizes"));
    }
    if let Some(c) = m.nents {
        if c.shown as usize != m.phys_addrs.len() || c.shown > c.total {
            return Err(ErrorKind::ListLength("phys_addrs"));
        }
    }
    if let Some(c) = m.ents {
        if c.shown as usize != m.dma_addrs.len() || c.shown > c.total {
            return Err(ErrorKind::ListLength("dma_addrs"));
        }
    }
    Ok(EventKind::MapSg(m))
}

fn sync(f: &Fields<'_>, to: SyncTo) -> Result<EventKind, ErrorKind> {
    Ok(EventKind::Sync(Sync {
        to,
        dir: f.dir()?,
        dma_addr: DmaAddr(f.hex(Key::DmaAddr)?),
        size: f.dec(Key::Size)?,
    }))
}

fn sync_sg(f: &Fields<'_>, to: SyncTo) -> Result<EventKind, ErrorKind> {
    let s = SyncSg {
        to,
        dir: f.dir()?,
        dma_addrs: f.list(Key::DmaAddrs, DmaAddr)?,
        sizes: f.list(Key::Sizes, |s| s)?,
    };
    if s.dma_addrs.len() != s.sizes.len() {
        return Err(ErrorKind::ListLength("sizes"));
    }
    Ok(EventKind::SyncSg(s))
}

/// `%p`: hashed, or `(____ptrval____)` early in boot.
fn virt_addr(f: &Fields<'_>) -> Option<u64> {
    f.get(Key::VirtAddr).and_then(field::hex)
}

fn phys_list(f: &Fields<'_>, sgt: bool) -> Result<Vec<PhysAddr>, ErrorKind> {
    if sgt {
        f.list(Key::PhysAddrs, PhysAddr)
    } else {
        Ok(Vec::new())
    }
}

fn alloc(f: &Fields<'_>, names: &mut Names<'_>, kind: AllocKind) -> Result<EventKind, ErrorKind> {
    let flags =
        std::str::from_utf8(f.req(Key::Flags)?).map_err(|_| ErrorKind::BadField("flags"))?;
    Ok(EventKind::Alloc(Alloc {
        kind,
        dir: f.opt_dir()?,
        dma_addr: DmaAddr(f.hex(Key::DmaAddr)?),
        size: f.dec(Key::Size)?,
        virt_addr: virt_addr(f),
        phys_addrs: phys_list(f, kind == AllocKind::Sgt)?,
        flags: Gfp(names.gfps.get(flags)),
        attrs: f.attrs()?,
    }))
}

fn free(f: &Fields<'_>, kind: FreeKind) -> Result<EventKind, ErrorKind> {
    let sgt = kind == FreeKind::Sgt;
    Ok(EventKind::Free(Free {
        kind,
        dir: f.opt_dir()?,
        dma_addr: DmaAddr(f.hex(Key::DmaAddr)?),
        size: f.dec(Key::Size)?,
        virt_addr: virt_addr(f),
        phys_addrs: phys_list(f, sgt)?,
        attrs: if sgt && f.get(Key::Attrs).is_none() {
            Default::default()
        } else {
            f.attrs()?
        },
    }))
}
