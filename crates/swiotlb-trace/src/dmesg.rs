//! swiotlb lines of the kernel log (`dmesg`, `/dev/kmsg` text, a serial
//! console capture).
//!
//! A line may start with a `<N>` level and a `[ seconds.micros]` stamp
//! (and a `[Tn]` caller id); a device message has the driver's
//! `DRIVER DEVICE: ` before the text.

use crate::addr::PhysAddr;
use crate::error::ErrorKind;
use crate::event::{Device, Message};
use crate::field::{self, trim};
use crate::intern::Intern;

const TLB: &[u8] = b"software IO TLB: ";
const FULL: &[u8] = b"swiotlb buffer is full (sz: ";

/// The parts of a swiotlb log line.
pub(crate) struct Line {
    pub(crate) timestamp_ns: Option<u64>,
    pub(crate) device: Option<Device>,
    pub(crate) message: Message,
}

/// `[ 12.345678]`: the stamp and the text after it.
fn stamp(s: &[u8]) -> Option<(u64, &[u8])> {
    let inner = s.strip_prefix(b"[")?;
    let close = memchr::memchr(b']', inner)?;
    let ts = field::timestamp(trim(&inner[..close]))?;
    Some((ts, &inner[close + 1..]))
}

fn strip_prefixes(mut s: &[u8]) -> (Option<u64>, &[u8]) {
    if let Some(rest) = s.strip_prefix(b"<") {
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b'>') {
            s = &rest[digits + 1..];
        }
    }
    let mut ts = None;
    if let Some((t, rest)) = stamp(s) {
        ts = Some(t);
        s = rest;
        // A caller id, `[T123]` or `[C2]`.
        if let Some(rest) = s.strip_prefix(b"[") {
            if let Some(close) = memchr::memchr(b']', rest) {
                s = &rest[close + 1..];
            }
        }
    }
    (ts, trim(s))
}

/// `Ok(None)` for a line that is not a swiotlb message this crate reads.
pub(crate) fn parse(line: &[u8], devices: &mut Intern) -> Result<Option<Line>, ErrorKind> {
    let (timestamp_ns, text) = strip_prefixes(line);
    if let Some(rest) = text.strip_prefix(TLB) {
        let message = if let Some(r) = rest.strip_prefix(b"mapped [mem ") {
            mapped(r).ok_or(ErrorKind::BadField("mapped"))?
        } else if let Some(r) = rest.strip_prefix(b"area num ") {
            let n = r.strip_suffix(b".").unwrap_or(r);
            let n = field::dec(trim(n)).and_then(|n| u32::try_from(n).ok());
            Message::Areas(n.ok_or(ErrorKind::BadField("area num"))?)
        } else {
            return Ok(None);
        };
        return Ok(Some(Line {
            timestamp_ns,
            device: None,
            message,
        }));
    }
    let Some(at) = memchr::memmem::find(text, FULL) else {
        return Ok(None);
    };
    let prefix = trim(&text[..at]);
    let prefix = prefix.strip_suffix(b":").unwrap_or(prefix);
    let device = match prefix.iter().rposition(|&c| c == b' ') {
        Some(i) => &prefix[i + 1..],
        None => prefix,
    };
    let device = if device.is_empty() {
        None
    } else {
        let s = std::str::from_utf8(device).map_err(|_| ErrorKind::Device)?;
        Some(Device(devices.get(s)))
    };
    let message = full(&text[at + FULL.len()..]).ok_or(ErrorKind::BadField("sz"))?;
    Ok(Some(Line {
        timestamp_ns,
        device,
        message,
    }))
}

/// `0xSTART-0xEND] (NMB)`.
fn mapped(s: &[u8]) -> Option<Message> {
    let dash = memchr::memchr(b'-', s)?;
    let close = memchr::memchr(b']', s)?;
    let start = field::hex(&s[..dash])?;
    let end = field::hex(s.get(dash + 1..close)?)?;
    let mb = trim(&s[close + 1..]).strip_prefix(b"(")?;
    let mb = mb.strip_suffix(b"MB)")?;
    Some(Message::Mapped {
        start: PhysAddr(start),
        end: PhysAddr(end),
        megabytes: field::dec(mb)?,
    })
}

/// `N bytes)[, total N (slots), used N (slots)]`.
fn full(s: &[u8]) -> Option<Message> {
    let sp = memchr::memchr(b' ', s)?;
    let size = field::dec(&s[..sp])?;
    let rest = s[sp..].strip_prefix(b" bytes)")?;
    let slots = |key: &[u8]| -> Option<u64> {
        let at = memchr::memmem::find(rest, key)? + key.len();
        let r = &rest[at..];
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        field::dec(&r[..n])
    };
    Some(Message::Full {
        size,
        total_slots: slots(b"total "),
        used_slots: slots(b"used "),
    })
}
