//! Where each member's value of a JSON object lies in its source bytes, so a publisher's `data`
//! is forwarded byte for byte instead of being parsed into a tree and written out again.
//!
//! A structural scan only (strings, nesting, scalars), for input that simd-json validates
//! separately: on valid JSON its spans are exact; on anything else it stops early or returns
//! spans nobody uses, and it never panics and always ends (each step moves forward).

/// Appends to `out` the `(start, end)` byte span of every member value of the JSON object
/// `src` holds, in source order (a key's duplicates included). False when `src` is not an
/// object or the scan met something no valid object has; `out` is then incomplete.
/// Linear in `src.len()`.
pub(super) fn member_values(src: &[u8], out: &mut Vec<(usize, usize)>) -> bool {
    out.clear();
    let mut i = skip_ws(src, 0);
    if src.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(src, i + 1);
    if src.get(i) == Some(&b'}') {
        return true;
    }
    loop {
        let Some(key_end) = string_end(src, i) else {
            return false;
        };
        i = skip_ws(src, key_end);
        if src.get(i) != Some(&b':') {
            return false;
        }
        let start = skip_ws(src, i + 1);
        let Some(end) = value_end(src, start) else {
            return false;
        };
        out.push((start, end));
        i = skip_ws(src, end);
        match src.get(i) {
            Some(b',') => i = skip_ws(src, i + 1),
            Some(b'}') => return true,
            _ => return false,
        }
    }
}

/// The first index at or after `i` that is not JSON whitespace (RFC 8259 §2).
fn skip_ws(src: &[u8], mut i: usize) -> usize {
    while matches!(src.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the string that starts at `i` (a `"`), skipping escaped characters.
fn string_end(src: &[u8], i: usize) -> Option<usize> {
    if src.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        let k = j + src
            .get(j..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\')?;
        if src[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2;
    }
}

/// Just past the value that starts at `start`: a string, an object or array (nesting
/// counted, strings inside skipped whole), or a scalar (number, `true`, `false`, `null`).
fn value_end(src: &[u8], start: usize) -> Option<usize> {
    match src.get(start)? {
        b'"' => string_end(src, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = start;
            loop {
                match src.get(j)? {
                    b'"' => {
                        j = string_end(src, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = src[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(src.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::member_values;

    fn values(src: &str) -> Option<Vec<&str>> {
        let mut spans = Vec::new();
        member_values(src.as_bytes(), &mut spans)
            .then(|| spans.iter().map(|&(a, b)| &src[a..b]).collect())
    }

    #[test]
    fn every_kind_of_value_is_spanned_exactly() {
        let src = r#" { "topic" : "a.b", "data":{"x":[1,{"y":"}]\"{"}],"z":null} ,"ts":17,"n":-1.5e3,"t":true,"s":"\\\"" } "#;
        assert_eq!(
            values(src).unwrap(),
            vec![
                r#""a.b""#,
                r#"{"x":[1,{"y":"}]\"{"}],"z":null}"#,
                "17",
                "-1.5e3",
                "true",
                r#""\\\"""#
            ]
        );
        assert_eq!(values("{}").unwrap(), Vec::<&str>::new());
        assert_eq!(values(r#"{"a":[]}"#).unwrap(), vec!["[]"]);
    }

    #[test]
    fn what_is_not_an_object_is_refused_and_nothing_panics() {
        for bad in [
            "",
            "[]",
            "1",
            "\"x\"",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":[1,",
            "{\"a\":\"x",
            "{\"a\\",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "{\"a\":}",
            "{\"a\":\"\\",
        ] {
            assert!(values(bad).is_none(), "{bad:?} accepted");
        }
        // Unbalanced closers inside a value end the scan without panicking.
        let _ = values("{\"a\":[1]]}");
        let _ = values("{\"a\":{]}");
    }
}
