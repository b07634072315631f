//! JSON string escaping, once (a JSON string) or twice (a JSON string
//! inside a JSON string: how a `Detail` keeps its string values).
//!
//! These run over every `Text`, `Json` and `Syslog` field the encoder
//! writes, so they test sixteen bytes at a time: a run without escapes
//! costs one load, one compare and one store per sixteen bytes, and a
//! chunk with escapes (JSON text has a quote every few bytes) writes all of
//! them in one pass over its bit mask, with one check for room.
//!
//! Why not serde_json's escaper: with these functions written over
//! `serde_json::to_writer` instead (same output, checked by the tests
//! below), one interleaved run of `examples/format_speed.rs` (Intel Xeon,
//! 3 × 9 rounds) measured a whole `text` event at 2.47× the CPU, `syslog`
//! at 2.28× and `json` at 1.26× (`bench/RESULTS.md`, "The JSON escaper").

/// What follows the backslash for each byte a JSON string must escape
/// (`u`: `\\u00XX`), 0 for the bytes written as they are: control
/// characters, `"` and `\\`, escaped as serde_json escapes them.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` as a JSON string literal (quotes included), escaping as
/// RFC 8259 requires, byte for byte what serde_json writes.
pub fn push_json_str(out: &mut String, s: &str) {
    // SAFETY: `escape_into` appends `s`'s UTF-8 sequences whole (it only
    // ever splits `s` before an ASCII byte) and ASCII escapes, so `out`
    // stays UTF-8.
    let out = unsafe { out.as_mut_vec() };
    out.push(b'"');
    escape_into::<false>(out, s.as_bytes());
    out.push(b'"');
}

/// [`push_json_str`] for a byte buffer.
pub fn push_json_bytes(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into::<false>(out, s.as_bytes());
    out.push(b'"');
}

/// Appends `s` escaped as the inside of a JSON string (no quotes).
pub fn push_escaped(out: &mut String, s: &str) {
    // SAFETY: as in `push_json_str`.
    escape_into::<false>(unsafe { out.as_mut_vec() }, s.as_bytes());
}

/// Appends `s` escaped as the inside of a JSON string, and that escaped
/// again: the inside of a JSON string value as it appears in a Detail kept
/// escaped (`a"b` → `a\\\"b`). Returns how many bytes the second escaping
/// added, i.e. how much longer the text is than the once-escaped text AWS
/// counts.
pub fn push_escaped_twice(out: &mut String, s: &str) -> usize {
    // SAFETY: as in `push_json_str`.
    escape_into::<true>(unsafe { out.as_mut_vec() }, s.as_bytes())
}

/// Appends `bytes` (UTF-8) escaped once, or with `TWICE` twice; returns
/// the bytes the second escaping added (0 with one escaping).
fn escape_into<const TWICE: bool>(out: &mut Vec<u8>, bytes: &[u8]) -> usize {
    // Most bytes one input byte becomes: `\u00XX`, or escaped again
    // `\\u00XX`.
    let widest: usize = if TWICE { 7 } else { 6 };
    let n = bytes.len();
    let mut added = 0;
    // Invariant: at least `n - i + 17` bytes of spare capacity (the rest
    // unescaped, a chunk's overshoot, a closing quote the caller adds). A
    // chunk without escapes keeps it (it consumes as many bytes as it
    // keeps); one with escapes, or an escape in the tail, first makes room
    // for the most they can write.
    out.reserve(n + 17);
    let mut i = 0;
    // The buffer's pointer and length live in registers in the loops.
    let mut dst = out.as_mut_ptr();
    let mut len = out.len();
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n`: sixteen bytes of `bytes` at `i`.
        let chunk: &[u8; 16] = unsafe { &*bytes.as_ptr().add(i).cast::<[u8; 16]>() };
        let m = escapes16(chunk);
        if m == 0 {
            // SAFETY: the invariant leaves room for sixteen bytes at `len`.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst.add(len), 16) };
            len += 16;
            i += 16;
            continue;
        }
        // Every escape of the chunk in one pass (JSON text is dense with
        // quotes): room for all sixteen bytes at their widest.
        let room = n - i + 17 + 16 * (widest - 1);
        if out.capacity() - len < room {
            // SAFETY: `len` bytes are initialised (all written above).
            unsafe { out.set_len(len) };
            out.reserve(room);
            dst = out.as_mut_ptr();
        }
        let whole = i + 32 <= n;
        // SAFETY: the room made above; with `whole`, sixteen bytes of
        // `bytes` follow every byte of the chunk.
        (len, added) =
            unsafe { escape_chunk::<TWICE>(bytes, i, whole, chunk, m, 0, dst, len, added) };
        i += 16;
    }
    // Fewer than sixteen bytes left: most often none needs escaping (a
    // short field, the end of a line), so they are tested at once and
    // copied. Otherwise, after sixteen bytes or more, they are the end of
    // the last sixteen, escaped as a chunk (from the first byte not yet
    // written); in a short string, one at a time.
    let rest = n - i;
    if rest > 0 {
        if n >= 16 {
            let skip = 16 - rest;
            // SAFETY: `n >= 16`: the last sixteen bytes of `bytes`.
            let chunk: &[u8; 16] = unsafe { &*bytes.as_ptr().add(n - 16).cast::<[u8; 16]>() };
            let m = escapes16(chunk) >> skip << skip;
            if m == 0 {
                // SAFETY: within the invariant's room; `rest` bytes at `i`.
                unsafe { copy_short(bytes.as_ptr().add(i), dst.add(len), rest) };
                len += rest;
            } else {
                let room = 17 + 16 * widest;
                if out.capacity() - len < room {
                    // SAFETY: `len` bytes are initialised (all written above).
                    unsafe { out.set_len(len) };
                    out.reserve(room);
                    dst = out.as_mut_ptr();
                }
                // SAFETY: the room made above; the chunk's first `skip`
                // bytes were written, and its escapes from `skip` on are
                // in `m`.
                (len, added) = unsafe {
                    escape_chunk::<TWICE>(bytes, n - 16, false, chunk, m, skip, dst, len, added)
                };
            }
            i = n;
        // SAFETY: `n < 16`: the `n` bytes of `bytes`.
        } else if !unsafe { any_escape_short(bytes.as_ptr(), n) } {
            // SAFETY: within the invariant's room; `rest` bytes at `i`.
            unsafe { copy_short(bytes.as_ptr().add(i), dst.add(len), rest) };
            len += rest;
            i = n;
        }
    }
    while i < n {
        let b = bytes[i];
        i += 1;
        if ESCAPE[usize::from(b)] == 0 {
            // SAFETY: within the invariant's room.
            unsafe { *dst.add(len) = b };
            len += 1;
            continue;
        }
        let room = n - i + 17 + widest;
        if out.capacity() - len < room {
            // SAFETY: `len` bytes are initialised (all written above).
            unsafe { out.set_len(len) };
            out.reserve(room);
            dst = out.as_mut_ptr();
        }
        // SAFETY: room for `widest` bytes at `len` (checked above).
        (len, added) = unsafe { write_escape::<TWICE>(dst, len, added, b) };
    }
    // SAFETY: `len` bytes are initialised.
    unsafe { out.set_len(len) };
    added
}

/// Writes the sixteen bytes of `chunk` (the input at `at`) from byte
/// `start` on, escaping those whose bits are set in `m` (bits below
/// `start` clear), at `len`; returns the new length and escaping added.
///
/// The plain run before each escape is copied sixteen bytes at a time (one
/// load and one store; a copy of the run's own length is a call to
/// `memcpy` per escape): from the input when `whole` (sixteen bytes follow
/// every run's start), and the store's overshoot is overwritten by what
/// comes next.
///
/// # Safety
/// Room for sixteen bytes at their widest, plus sixteen, at `len`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn escape_chunk<const TWICE: bool>(
    bytes: &[u8],
    at: usize,
    whole: bool,
    chunk: &[u8; 16],
    mut m: u32,
    mut start: usize,
    dst: *mut u8,
    mut len: usize,
    mut added: usize,
) -> (usize, usize) {
    while m != 0 {
        let j = m.trailing_zeros() as usize;
        // SAFETY: within the caller's room; `start..j` is inside the
        // chunk, and with `whole` sixteen bytes of `bytes` follow
        // `at + start`.
        unsafe {
            if whole {
                copy16(bytes.as_ptr().add(at + start), dst.add(len));
            } else {
                copy_short(chunk.as_ptr().add(start), dst.add(len), j - start);
            }
        }
        len += j - start;
        // SAFETY: as above.
        (len, added) = unsafe { write_escape::<TWICE>(dst, len, added, chunk[j]) };
        start = j + 1;
        m &= m - 1;
    }
    // SAFETY: as above.
    unsafe {
        if whole {
            copy16(bytes.as_ptr().add(at + start), dst.add(len));
        } else {
            copy_short(chunk.as_ptr().add(start), dst.add(len), 16 - start);
        }
    }
    (len + 16 - start, added)
}

/// Copies sixteen bytes from `src` to `dst` (unaligned).
///
/// # Safety
/// Sixteen bytes readable at `src` and writable at `dst`, not overlapping.
#[inline(always)]
pub(super) unsafe fn copy16(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        dst.cast::<[u8; 16]>()
            .write_unaligned(src.cast::<[u8; 16]>().read_unaligned())
    };
}

/// Copies `n` (at most sixteen) bytes from `src` to `dst`, without a call
/// to `memcpy` for these short runs.
///
/// # Safety
/// `n` bytes readable at `src` and writable at `dst`, not overlapping.
#[inline(always)]
pub(super) unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's; each copy stays within the first `n` bytes.
    unsafe {
        if n >= 8 {
            dst.cast::<u64>()
                .write_unaligned(src.cast::<u64>().read_unaligned());
            dst.add(n - 8)
                .cast::<u64>()
                .write_unaligned(src.add(n - 8).cast::<u64>().read_unaligned());
        } else if n >= 4 {
            dst.cast::<u32>()
                .write_unaligned(src.cast::<u32>().read_unaligned());
            dst.add(n - 4)
                .cast::<u32>()
                .write_unaligned(src.add(n - 4).cast::<u32>().read_unaligned());
        } else {
            for k in 0..n {
                *dst.add(k) = *src.add(k);
            }
        }
    }
}

/// Writes the escape of `b` (a byte `ESCAPE` flags) at `dst + len`:
/// `\"`, `\n`, `\u001f`…, or with `TWICE` that escaped again. Returns
/// the new length and `added` plus what the second escaping added.
///
/// # Safety
/// `dst + len` has room for 7 bytes (6 without `TWICE`).
#[inline(always)]
unsafe fn write_escape<const TWICE: bool>(
    dst: *mut u8,
    mut len: usize,
    mut added: usize,
    b: u8,
) -> (usize, usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let e = ESCAPE[usize::from(b)];
    // SAFETY: the caller's room.
    unsafe {
        *dst.add(len) = b'\\';
        len += 1;
        if TWICE {
            // The backslash of the first escaping, escaped; then what
            // follows it, itself escaped if it is `"` or `\`.
            *dst.add(len) = b'\\';
            len += 1;
            if e == b'"' || e == b'\\' {
                *dst.add(len) = b'\\';
                len += 1;
                added += 2;
            } else {
                added += 1;
            }
        }
        if e == b'u' {
            *dst.add(len) = b'u';
            *dst.add(len + 1) = b'0';
            *dst.add(len + 2) = b'0';
            *dst.add(len + 3) = HEX[usize::from(b >> 4)];
            *dst.add(len + 4) = HEX[usize::from(b & 0xF)];
            len += 5;
        } else {
            *dst.add(len) = e;
            len += 1;
        }
    }
    (len, added)
}

/// Whether any of the `n` (1 to 15) bytes at `p` needs escaping: two
/// overlapping loads of 8, 4 or 1 to 3 bytes cover them all, tested
/// together as sixteen bytes (a byte tested twice is no matter).
///
/// # Safety
/// `n` bytes readable at `p`, `0 < n < 16`.
#[inline(always)]
unsafe fn any_escape_short(p: *const u8, n: usize) -> bool {
    // SAFETY: the caller's; every read stays within the `n` bytes.
    let (lo, hi) = unsafe {
        if n >= 8 {
            (
                p.cast::<u64>().read_unaligned(),
                p.add(n - 8).cast::<u64>().read_unaligned(),
            )
        } else if n >= 4 {
            let a = u64::from(p.cast::<u32>().read_unaligned());
            let b = u64::from(p.add(n - 4).cast::<u32>().read_unaligned());
            (a | b << 32, a | b << 32)
        } else {
            let x = u64::from(*p) | u64::from(*p.add(n / 2)) << 8 | u64::from(*p.add(n - 1)) << 16;
            let x = x | x << 24 | x << 48;
            (x, x)
        }
    };
    let mut chunk = [0u8; 16];
    chunk[..8].copy_from_slice(&lo.to_ne_bytes());
    chunk[8..].copy_from_slice(&hi.to_ne_bytes());
    escapes16(&chunk) != 0
}

/// `b` (at most sixteen bytes) at the start of a sixteen-byte buffer
/// padded with spaces. Built from two overlapping loads of 8, 4 or 1 byte
/// shifted into place in a `u128` (copies into a buffer at a variable
/// offset are merged by the compiler into a call to `memcpy`). Test the
/// buffer with [`escapes16`]: the padding needs no escaping.
#[inline(always)]
pub(super) fn load_short(b: &[u8]) -> [u8; 16] {
    let n = b.len();
    assert!(n <= 16);
    let v = if let (Some(lo), Some(hi)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        // The overlapping bytes are equal in both, so OR keeps them.
        u128::from(u64::from_le_bytes(*lo)) | u128::from(u64::from_le_bytes(*hi)) << ((n - 8) * 8)
    } else if let (Some(lo), Some(hi)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        u128::from(u32::from_le_bytes(*lo)) | u128::from(u32::from_le_bytes(*hi)) << ((n - 4) * 8)
    } else if n > 0 {
        u128::from(b[0])
            | u128::from(b[n / 2]) << (n / 2 * 8)
            | u128::from(b[n - 1]) << ((n - 1) * 8)
    } else {
        0
    };
    // Spaces after the `n` bytes (none when there are sixteen).
    let spaces = u128::from_le_bytes([b' '; 16])
        .checked_shl(n as u32 * 8)
        .unwrap_or(0);
    (v | spaces).to_le_bytes()
}

/// `b` is ASCII: sixteen bytes at a time, ORed together and tested once
/// (`<[u8]>::is_ascii` compiles to a test per byte here: 4% of an RFC
/// 5424 event's time in perf, against under 0.5% for this).
pub(super) fn is_ascii(b: &[u8]) -> bool {
    let (chunks, rest) = b.as_chunks::<16>();
    let all = chunks
        .iter()
        .fold(u128::from_le_bytes(load_short(rest)), |a, c| {
            a | u128::from_le_bytes(*c)
        });
    all & u128::from_le_bytes([0x80; 16]) == 0
}

/// How many bytes of `b` a JSON string must escape, sixteen at a time.
/// On x86-64 the matches are summed in byte lanes and added up once per
/// 255 chunks (`psadbw`): a bit count per chunk compiles, without the
/// `popcnt` feature the baseline lacks, to ~15 instructions, which was
/// 4% of a syslog event's instructions.
pub(super) fn count_escapes(b: &[u8]) -> usize {
    let (chunks, rest) = b.as_chunks::<16>();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_add_epi64, _mm_cvtsi128_si64, _mm_sad_epu8, _mm_setzero_si128, _mm_srli_si128,
            _mm_sub_epi8,
        };
        // SAFETY: SSE2 is always there on x86-64; each load reads one
        // chunk of `b` (or a copy of its rest).
        unsafe {
            let zero = _mm_setzero_si128();
            let mut sums = zero;
            // At most 255 matches per byte lane before they are added up.
            for block in chunks.chunks(255) {
                let mut lanes = zero;
                for c in block {
                    // A match is 0xFF (-1) in its lane.
                    lanes = _mm_sub_epi8(lanes, escape_lanes16(c));
                }
                sums = _mm_add_epi64(sums, _mm_sad_epu8(lanes, zero));
            }
            // The rest is padded with spaces, which need no escape.
            let last = _mm_sub_epi8(zero, escape_lanes16(&load_short(rest)));
            sums = _mm_add_epi64(sums, _mm_sad_epu8(last, zero));
            let sums = _mm_add_epi64(sums, _mm_srli_si128::<8>(sums));
            _mm_cvtsi128_si64(sums) as usize
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let n: usize = chunks
            .iter()
            .map(|c| escapes16(c).count_ones() as usize)
            .sum();
        n + rest
            .iter()
            .filter(|&&c| ESCAPE[usize::from(c)] != 0)
            .count()
    }
}

/// Each byte of `chunk` that needs escaping as 0xFF in its lane, others 0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_lanes16(chunk: &[u8; 16]) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is always there on x86-64; the load reads the 16 bytes
    // of `chunk`.
    unsafe {
        let x = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        // Unsigned x <= 0x1F: a control byte.
        let control = _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(0x1F)), _mm_set1_epi8(0x1F));
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
        _mm_or_si128(control, _mm_or_si128(quote, backslash))
    }
}

/// Bit `j` set for each byte `chunk[j]` that needs escaping.
#[inline(always)]
pub(super) fn escapes16(chunk: &[u8; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is always there on x86-64.
        unsafe { std::arch::x86_64::_mm_movemask_epi8(escape_lanes16(chunk)) as u32 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut m = 0;
        for (j, &b) in chunk.iter().enumerate() {
            m |= u32::from(ESCAPE[usize::from(b)] != 0) << j;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long strings mixing plain runs, every kind of escape and multi-byte
    /// characters, into buffers of every fill level (the spare-capacity
    /// checks and the reserves as escapes grow the output).
    #[test]
    fn escaping_matches_serde_for_long_mixed_strings() {
        let pieces = [
            "a",
            "bcdefghijklmnopq",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{1f}",
            "é",
            "€",
            "😀",
            "\u{7f}",
            "\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..400 {
            let mut s = String::new();
            let target = round * 3 % 700;
            while s.len() < target {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let mut out = String::with_capacity(round % 37);
            out.push_str(&"p".repeat(round % 37));
            let prefix = out.clone();
            push_json_str(&mut out, &s);
            assert_eq!(
                out,
                format!("{prefix}{}", serde_json::to_string(&s).unwrap())
            );
        }
    }

    /// Every ASCII character and some non-ASCII ones, at every offset
    /// within and across the sixteen-byte chunks the escaper tests, alone
    /// and next to another escape.
    #[test]
    fn escaping_matches_serde_at_every_offset() {
        let specials: Vec<String> = (0u8..0x80)
            .map(|b| (b as char).to_string())
            .chain(["é", "€", "😀", "\u{7f}", "\u{80}", "\u{a0}"].map(String::from))
            .collect();
        for special in &specials {
            for at in 0..20 {
                for len in [at, at + 1, at + 9, 24, 41] {
                    let mut s = "x".repeat(at);
                    s.push_str(special);
                    if len > at {
                        s.push('"');
                    }
                    while s.len() < len {
                        s.push('a');
                    }
                    let mut out = String::from("prefix");
                    push_json_str(&mut out, &s);
                    assert_eq!(
                        out,
                        format!("prefix{}", serde_json::to_string(&s).unwrap()),
                        "{s:?}"
                    );
                }
            }
        }
    }

    /// A short string's buffer holds it, then spaces.
    #[test]
    fn loads_short_strings() {
        let s = b"0123456789abcdef";
        for n in 0..=16 {
            let buf = load_short(&s[..n]);
            assert_eq!(buf[..n], s[..n]);
            assert!(buf[n..].iter().all(|&c| c == b' '), "{n}");
        }
    }

    /// The count is the bytes serde_json escapes, at every length.
    #[test]
    fn counts_the_bytes_to_escape() {
        let s: Vec<u8> = (0u8..0x80)
            .chain(b"\"\\ab\x01\xc3\xa9".iter().copied())
            .collect();
        for start in 0..20 {
            for end in start..s.len() {
                let b = &s[start..end];
                let want = b
                    .iter()
                    .filter(|&&c| c < 0x20 || c == b'"' || c == b'\\')
                    .count();
                assert_eq!(count_escapes(b), want, "{start}..{end}");
            }
        }
    }

    /// Long runs where every byte needs escaping: the byte-lane sums are
    /// added up before any lane can pass 255, at and across that point.
    #[test]
    fn counts_long_runs_of_escapes() {
        for n in [16 * 255 - 1, 16 * 255, 16 * 255 + 1, 16 * 256, 16 * 600 + 7] {
            let quotes = vec![b'"'; n];
            assert_eq!(count_escapes(&quotes), n, "{n}");
            let mixed: Vec<u8> = (0..n).map(|i| [b'"', b'a', b'\\', 0x01][i % 4]).collect();
            // Three of every four bytes need escaping.
            let want = n / 4 * 3 + (n % 4).min(1) + (n % 4).saturating_sub(2);
            assert_eq!(count_escapes(&mixed), want, "{n}");
        }
    }

    /// Escaping twice is escaping once, then escaping that text again,
    /// and the count it returns is the difference in length.
    #[test]
    fn escaping_twice_is_serde_applied_twice() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| (b as char).to_string()).collect();
        samples.extend(
            [
                "",
                "plain text that is longer than sixteen bytes",
                "<13>Nov 27 23:42:18 web01 app: \"quoted\" C:\\dir\n",
                "tab\there\r\n\u{0}\u{1f}\u{7f}é€😀",
                "\"\\\n\u{1}".repeat(40).as_str(),
            ]
            .map(String::from),
        );
        for s in &samples {
            let once = serde_json::to_string(s).unwrap();
            let twice = serde_json::to_string(&once).unwrap();
            let mut out = String::from("x");
            let added = push_escaped_twice(&mut out, s);
            // Between the outer quotes, without the inner ones (`\"`).
            assert_eq!(out[1..], twice[3..twice.len() - 3], "{s:?}");
            assert_eq!(added, (twice.len() - 2) - once.len() - 2, "{s:?}");
            let mut single = String::new();
            push_escaped(&mut single, s);
            assert_eq!(single, once[1..once.len() - 1], "{s:?}");
        }
    }

    /// Text made of plain bytes, quotes, backslashes and multi-byte
    /// characters only (chunks dense with escapes), escaped once
    /// as serde_json escapes it, into buffers of every fill level.
    #[test]
    fn quotes_and_backslashes_escape_as_serde_does() {
        let pieces = ["a", "\"", "\\", "é", "bcdefgh", "\"\"\"\"\"\"\"\"\"", "😀"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let mut s = String::new();
            while s.len() < round % 97 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let once = serde_json::to_string(&s).unwrap();
            let mut out = "x".repeat(round % 31);
            let before = out.len();
            push_escaped(&mut out, &s);
            assert_eq!(out[before..], once[1..once.len() - 1], "{s:?}");
        }
    }

    /// One non-ASCII byte anywhere in slices of every length up to three
    /// chunks and a tail, and none.
    #[test]
    fn ascii_check_matches_std() {
        for len in 0..=50 {
            let plain = vec![b'a'; len];
            assert!(is_ascii(&plain), "{len}");
            for at in 0..len {
                for high in [0x80, 0xC3, 0xFF] {
                    let mut b = plain.clone();
                    b[at] = high;
                    assert!(!is_ascii(&b), "{len} {at} {high:#x}");
                    assert_eq!(is_ascii(&b[..at]), b[..at].is_ascii());
                }
            }
        }
    }
}
