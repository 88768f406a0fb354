//! Word-at-a-time bit scans over a `[u64]` bitmap, bit `i` of the map being
//! bit `i % 64` of word `i / 64`.

#![forbid(unsafe_code)]

/// The first set bit in `[from, end)`, if any.
#[inline]
pub(crate) fn next_one(words: &[u64], from: u32, end: u32) -> Option<u32> {
    if from >= end {
        return None;
    }
    let mut w = (from / 64) as usize;
    let mut bits = words[w] & (!0u64 << (from % 64));
    loop {
        if bits != 0 {
            let i = w as u32 * 64 + bits.trailing_zeros();
            return (i < end).then_some(i);
        }
        w += 1;
        if w as u32 * 64 >= end {
            return None;
        }
        bits = words[w];
    }
}

/// The first clear bit in `[from, end)`, or `end` if all are set.
#[inline]
pub(crate) fn next_zero(words: &[u64], from: u32, end: u32) -> u32 {
    if from >= end {
        return end;
    }
    let mut w = (from / 64) as usize;
    let mut bits = !words[w] & (!0u64 << (from % 64));
    loop {
        if bits != 0 {
            return (w as u32 * 64 + bits.trailing_zeros()).min(end);
        }
        w += 1;
        if w as u32 * 64 >= end {
            return end;
        }
        bits = !words[w];
    }
}

/// The last set bit in `[lo, before)`, if any.
#[inline]
pub(crate) fn prev_one(words: &[u64], lo: u32, before: u32) -> Option<u32> {
    if before <= lo {
        return None;
    }
    let mut w = ((before - 1) / 64) as usize;
    let top = (before - 1) % 64;
    let mut bits = words[w] & (!0u64 >> (63 - top));
    loop {
        if bits != 0 {
            let i = w as u32 * 64 + 63 - bits.leading_zeros();
            return (i >= lo).then_some(i);
        }
        if w as u32 * 64 <= lo {
            return None;
        }
        w -= 1;
        bits = words[w];
    }
}

/// The mask of bits `[lo, hi)` within one word, `lo < hi <= 64`.
#[inline]
fn span(lo: u32, hi: u32) -> u64 {
    let upper = if hi == 64 { !0 } else { (1u64 << hi) - 1 };
    upper & (!0u64 << lo)
}

/// The word index and mask of bits `[start, start + n)`, `n > 0`, when
/// they lie in one word.
#[inline]
pub(crate) fn word_mask(start: u32, n: u32) -> Option<(usize, u64)> {
    let lo = start % 64;
    (n > 0 && lo + n <= 64).then(|| ((start / 64) as usize, span(lo, lo + n)))
}

/// Sets bits `[start, start + n)`.
#[inline]
pub(crate) fn set_range(words: &mut [u64], start: u32, n: u32) {
    if let Some((w, m)) = word_mask(start, n) {
        words[w] |= m;
        return;
    }
    for_range(words, start, n, |w, m| *w |= m);
}

/// Clears bits `[start, start + n)`.
#[inline]
pub(crate) fn clear_range(words: &mut [u64], start: u32, n: u32) {
    if let Some((w, m)) = word_mask(start, n) {
        words[w] &= !m;
        return;
    }
    for_range(words, start, n, |w, m| *w &= !m);
}

#[inline]
fn for_range(words: &mut [u64], start: u32, n: u32, mut f: impl FnMut(&mut u64, u64)) {
    let end = start + n;
    let mut i = start;
    while i < end {
        let w = (i / 64) as usize;
        let lo = i % 64;
        let hi = (end - w as u32 * 64).min(64);
        f(&mut words[w], span(lo, hi));
        i = w as u32 * 64 + hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_mask_is_the_range_in_one_word() {
        for start in 0..192u32 {
            for n in 0..=70u32 {
                let got = word_mask(start, n);
                if n == 0 || start % 64 + n > 64 {
                    assert_eq!(got, None, "{start} {n}");
                    continue;
                }
                let mut words = [0u64; 4];
                for_range(&mut words, start, n, |w, m| *w |= m);
                let (w, m) = got.expect("one word");
                assert_eq!(words[w], m, "{start} {n}");
                assert_eq!(words.iter().map(|x| x.count_ones()).sum::<u32>(), n);
            }
        }
    }

    #[test]
    fn scans_match_naive() {
        let mut words = [0u64; 4];
        set_range(&mut words, 3, 70);
        clear_range(&mut words, 10, 5);
        let bit = |i: u32| words[(i / 64) as usize] >> (i % 64) & 1 == 1;
        for i in 0..256 {
            assert_eq!(
                bit(i),
                (3..73).contains(&i) && !(10..15).contains(&i),
                "bit {i}"
            );
        }
        for from in 0..256 {
            for end in from..=256 {
                let naive_one = (from..end).find(|&i| bit(i));
                assert_eq!(next_one(&words, from, end), naive_one);
                let naive_zero = (from..end).find(|&i| !bit(i)).unwrap_or(end);
                assert_eq!(next_zero(&words, from, end), naive_zero);
                let naive_prev = (from..end).rev().find(|&i| bit(i));
                assert_eq!(prev_one(&words, from, end), naive_prev);
            }
        }
    }
}
