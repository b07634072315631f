//! Whether a payload is one JSON value, for the `json` format: the same
//! answer as `serde_json::from_str::<serde::de::IgnoredAny>` (its
//! `ignore_value`, then nothing but whitespace), in less time.
//!
//! Hand-written rather than serde_json's own check: that check is about a
//! third of a `json` event's CPU (perf over `examples/format_speed.rs` with
//! `CASE=9`), and with this one instead the whole event costs 267 ns
//! rather than 343 (Intel Xeon, the two builds run alternately, 3 × 20
//! rounds of 20,000). It accepts and rejects exactly what serde_json does,
//! which the tests check against serde_json itself; nesting deeper than
//! [`DEPTH`] is left to serde_json.

/// Containers open at once this check follows (a bit each); deeper
/// payloads go to serde_json.
const DEPTH: u32 = 64;

/// `Some(true)` if `b` is one JSON value with only whitespace around it,
/// `Some(false)` if it is not, `None` if it nests deeper than [`DEPTH`].
pub(super) fn is_one_value(b: &[u8]) -> Option<bool> {
    let mut deep = false;
    let json = check(b, &mut deep) == Some(true);
    (!deep).then_some(json)
}

/// The check itself: `Some(true)` for one value, `None` or `Some(false)`
/// for anything else; nesting deeper than [`DEPTH`] sets `deep` and stops.
fn check(b: &[u8], deep: &mut bool) -> Option<bool> {
    let n = b.len();
    let mut i = 0;
    // Bit 0 is the innermost open container: 1 for an object.
    let mut stack: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value.
        i = whitespace(b, i);
        match *b.get(i)? {
            b'n' => i = ident(b, i, b"null")?,
            b't' => i = ident(b, i, b"true")?,
            b'f' => i = ident(b, i, b"false")?,
            b'-' => i = number(b, i + 1)?,
            b'0'..=b'9' => i = number(b, i)?,
            b'"' => i = string(b, i + 1)?,
            open @ (b'[' | b'{') => {
                if depth == DEPTH {
                    *deep = true;
                    return None;
                }
                let object = open == b'{';
                stack = stack << 1 | u64::from(object);
                depth += 1;
                i = whitespace(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if *b.get(i)? != close {
                    if object {
                        i = key(b, i)?;
                    }
                    continue;
                }
                // Empty: closed at once, and what follows is what follows
                // a value.
                stack >>= 1;
                depth -= 1;
                i += 1;
            }
            _ => return None,
        }
        // After a value: a comma and the next, or the containers it ends.
        loop {
            if depth == 0 {
                return Some(whitespace(b, i) == n);
            }
            i = whitespace(b, i);
            let object = stack & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i += 1;
                    if object {
                        i = key(b, i)?;
                    }
                    break;
                }
                b']' if !object => {}
                b'}' if object => {}
                _ => return None,
            }
            stack >>= 1;
            depth -= 1;
            i += 1;
        }
    }
}

/// Past the whitespace JSON allows at `i`.
#[inline(always)]
fn whitespace(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Past a key and its colon, whitespace allowed before each.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Option<usize> {
    let i = whitespace(b, i);
    if *b.get(i)? != b'"' {
        return None;
    }
    let i = whitespace(b, string(b, i + 1)?);
    (*b.get(i)? == b':').then_some(i + 1)
}

/// Past `word` at `i`.
#[inline(always)]
fn ident(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

/// Past a number's digits at `i` (after its `-`): `0` or digits not
/// starting with 0, then maybe a fraction and an exponent, each with at
/// least one digit.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| {
        b[i.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(i),
        _ => return None,
    }
    // A digit after a leading 0 (`01`), which serde_json refuses here, is
    // refused by the caller: nothing may follow a value but whitespace, a
    // comma or a closing bracket.
    if b.get(i) == Some(&b'.') {
        let d = digits(i + 1);
        if d == 0 {
            return None;
        }
        i += 1 + d;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let d = digits(i);
        if d == 0 {
            return None;
        }
        i += d;
    }
    Some(i)
}

/// Past a string's closing quote, from just after its opening one: no
/// control characters, and escapes as JSON has them (`\u` with four hex
/// digits, whatever they encode).
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        // Sixteen bytes at a time to the next quote, backslash or control
        // character.
        while let Some(chunk) = b.get(i..i + 16) {
            let chunk: &[u8; 16] = chunk.try_into().expect("sixteen bytes");
            let m = super::escape::escapes16(chunk);
            if m != 0 {
                i += m.trailing_zeros() as usize;
                break;
            }
            i += 16;
        }
        while let Some(&c) = b.get(i) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                break;
            }
            i += 1;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    fn serde_says(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    fn agree(text: &str) {
        match is_one_value(text.as_bytes()) {
            Some(ours) => assert_eq!(ours, serde_says(text), "{text:?}"),
            None => assert!(
                text.matches(['[', '{']).count() > DEPTH as usize,
                "{text:?}"
            ),
        }
    }

    #[test]
    fn agrees_with_serde_json_on_edge_cases() {
        let cases = [
            "",
            " ",
            "0",
            "-0",
            "-",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1e+5",
            "1E-5",
            "1.5e3",
            "1.e3",
            "0e",
            "0.0e0",
            "00",
            "1 2",
            "[1 2]",
            "[1,]",
            "[,1]",
            "[]",
            "[ ]",
            "{}",
            "{ }",
            "{,}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1}",
            "{\"a\" : 1 }",
            "{1:2}",
            "[}",
            "{]",
            "[[]",
            "[]]",
            "null",
            "nul",
            "nulll",
            "true",
            "True",
            "false",
            "fals",
            "\"",
            "\"a",
            "\"a\"",
            "\"\\\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\uD800\"",
            "\"\\uDC00\\uD800\"",
            "\"\\x\"",
            "\"\\/\"",
            "\"\\b\\f\\n\\r\\t\"",
            "\"\u{1}\"",
            "\"\u{7f}\"",
            "\"\t\"",
            "\"é😀\"",
            "é",
            "\u{feff}1",
            " \n\t\r1\r\t\n ",
            "\u{b}1",
            "[1,{\"a\":[true,null,{\"b\":\"c\"}]},-2.5e-3]",
            "{\"a\":{}}x",
            "[[[]]]",
            "[{}]",
            "{\"a\":[]}",
            "1]",
            "1}",
            "[1]]",
            "{\"a\":1}}",
            "\"\\u00e9\"",
            "\"\\",
            "\"\\u",
            "[\"\\",
            "{\"\\u0041\":0}",
            "[-]",
            "[-a]",
            "[1e5,1E+5,0.1]",
            "[\"a\" \"b\"]",
        ];
        for c in cases {
            agree(c);
        }
        // Long strings: the sixteen-byte scan, with its stops at every
        // offset.
        for stop in ["\"", "\\n", "\\u0041", "\\q", "\u{1}", "\u{1f}", "é"] {
            for at in 0..40 {
                for tail in ["\"", "\"]", "", "x\""] {
                    let s = format!("[\"{}{stop}{}{tail}", "a".repeat(at), "b".repeat(at % 7));
                    agree(&s);
                    agree(&s[1..]);
                }
            }
        }
        // Nesting at and past the depth this check follows.
        for depth in [63, 64, 65, 200] {
            agree(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            agree(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth - 1)));
        }
    }

    /// Random texts over JSON's characters, and random JSON documents with
    /// one byte changed, dropped or doubled: the same answer as serde_json.
    #[test]
    fn agrees_with_serde_json_on_random_texts() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<char> = "{}[]\",:0123456789 .eE-+truefalsnl\\u/bA\t\n\r\u{1}é"
            .chars()
            .collect();
        for _ in 0..20_000 {
            let len = (rnd() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize])
                .collect();
            agree(&s);
        }
        fn value(rnd: &mut impl FnMut() -> u64, out: &mut String, depth: u32) {
            let ws = [" ", "", "\n", "\t ", ""];
            out.push_str(ws[(rnd() % 5) as usize]);
            match rnd() % if depth > 4 { 4 } else { 7 } {
                0 => out.push_str(["true", "false", "null"][(rnd() % 3) as usize]),
                1 => out.push_str(
                    ["0", "-12", "3.25", "1e9", "-0.5E-7", "12345678901234567890"]
                        [(rnd() % 6) as usize],
                ),
                2 | 3 => {
                    out.push('"');
                    for _ in 0..rnd() % 20 {
                        out.push_str(
                            [
                                "a", "\\\"", "\\\\", "\\n", "\\u00e9", "é", " ", "\\/", "xyz",
                            ][(rnd() % 9) as usize],
                        );
                    }
                    out.push('"');
                }
                4 | 5 => {
                    out.push('{');
                    for k in 0..rnd() % 4 {
                        if k > 0 {
                            out.push(',');
                        }
                        out.push_str(&format!("\"k{k}\" :"));
                        value(rnd, out, depth + 1);
                    }
                    out.push('}');
                }
                _ => {
                    out.push('[');
                    for k in 0..rnd() % 4 {
                        if k > 0 {
                            out.push(',');
                        }
                        value(rnd, out, depth + 1);
                    }
                    out.push(']');
                }
            }
            out.push_str(ws[(rnd() % 5) as usize]);
        }
        for _ in 0..5_000 {
            let mut doc = String::new();
            value(&mut rnd, &mut doc, 0);
            agree(&doc);
            assert_eq!(is_one_value(doc.as_bytes()), Some(true), "{doc:?}");
            let bytes = doc.as_bytes();
            for _ in 0..8 {
                let at = (rnd() % bytes.len() as u64) as usize;
                let mut changed = bytes.to_vec();
                match rnd() % 3 {
                    0 => changed[at] = alphabet[(rnd() % 40) as usize] as u8,
                    1 => {
                        changed.remove(at);
                    }
                    _ => changed.insert(at, bytes[at]),
                }
                if let Ok(text) = String::from_utf8(changed) {
                    agree(&text);
                }
            }
        }
    }
}
