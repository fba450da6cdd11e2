//! JSON objects written straight into a byte buffer, for the audit log's one
//! record per Check.
//!
//! Why not serde_json: it escapes every key as well as every value and goes
//! through its serializer state per field. Under h2load on a cache hit, encoding
//! records that way was 0.8 µs of the audit thread's 1.5 µs per Check, on a path
//! whose whole budget over a do-nothing server is 3 µs; `cargo bench --bench
//! check -- audit/` measured 842 ns a record with serde_json, 536 here. Keys are
//! `'static` and written as they are (a debug assertion checks that they need no
//! escaping), and values are escaped exactly as serde_json escapes them, so a
//! line is byte for byte what serde_json writes for the same record (a test in
//! `ops::audit` compares the two on generated strings).

use std::fmt::{self, Write as _};

/// One JSON object being written: `{`, then one field per call, then `}` on
/// `end`. Nested objects are written with `object`.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    /// Starts an object at the end of `out`.
    pub fn begin(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push(b'}');
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| escape_of(b) == 0), "key `{key}` needs escaping");
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        string(self.out, value);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    /// What `value` displays as, as a string.
    pub fn display(&mut self, key: &'static str, value: impl fmt::Display) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        // Writing into a Vec cannot fail; a Display impl that errs leaves what it
        // wrote, and the line is still valid JSON.
        let _ = write!(Escaping(self.out), "{value}");
        self.out.push(b'"');
        self
    }

    /// A string written by `write` into the buffer, which must write nothing that
    /// needs escaping (digits and punctuation).
    pub fn raw_str(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        let start = self.out.len();
        write(self.out);
        debug_assert!(self.out.get(start..).is_some_and(|w| w.iter().all(|&b| escape_of(b) == 0)));
        self.out.push(b'"');
        self
    }

    pub fn int(&mut self, key: &'static str, value: impl itoa::Integer) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// An integer, or `null`.
    pub fn opt_int(&mut self, key: &'static str, value: Option<impl itoa::Integer>) -> &mut Self {
        match value {
            Some(value) => self.int(key, value),
            None => self.null(key),
        }
    }

    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// An array of strings.
    pub fn strs(&mut self, key: &'static str, values: &[String]) -> &mut Self {
        self.key(key);
        self.out.push(b'[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            string(self.out, value);
        }
        self.out.push(b']');
        self
    }

    /// A nested object, written by `fields`, or `null` when `value` is `None`.
    pub fn object<T>(
        &mut self,
        key: &'static str,
        value: Option<T>,
        fields: impl FnOnce(&mut Object<'_>, T),
    ) -> &mut Self {
        self.key(key);
        match value {
            Some(value) => {
                let mut inner = Object::begin(self.out);
                fields(&mut inner, value);
                inner.end();
            }
            None => self.out.extend_from_slice(b"null"),
        }
        self
    }
}

/// What a byte is escaped as: 0 for itself, `u` for `\u00XX`, else the letter
/// after the backslash. serde_json's table: `"`, `\` and the control characters
/// below 0x20 (DEL and non-ASCII are written as they are).
const fn escape(byte: u8) -> u8 {
    match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x00..=0x1f => b'u',
        _ => 0,
    }
}

/// `value` as a JSON string, quoted and escaped.
fn string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escape_into(out, value);
    out.push(b'"');
}

/// `escape` for every byte, so the scan is one load per byte.
// An index out of range in a constant is a compile error, not a panic.
#[allow(clippy::indexing_slicing)]
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0u8;
    loop {
        table[byte as usize] = escape(byte);
        if byte == u8::MAX {
            break table;
        }
        byte += 1;
    }
};

fn escape_of(byte: u8) -> u8 {
    // A u8 always indexes a 256-entry table; the compiler drops the check.
    ESCAPE.get(usize::from(byte)).copied().unwrap_or(b'u')
}

/// Where the first byte of `bytes` that needs escaping is, eight bytes at a time.
///
/// Why by hand: a byte-at-a-time scan was the audit writer's largest cost (a
/// quarter of its CPU under h2load), and nothing in the dependency tree finds
/// "below 0x20, `\"` or `\\`" in one pass (memchr looks for up to three exact
/// bytes). Each test below flags a byte in the word's high bits. The lowest flag
/// of each is exact: a false flag can only sit above a true one, where a borrow
/// from it ran, so the lowest flag of the three together is the first byte to
/// escape. Bytes from 0x80 up (UTF-8 beyond ASCII) are never flagged.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte below `n` (for `n` up to 0x80).
    const fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * n as u64) & !word & HIGH
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // Little-endian, so the lowest flag is the earliest byte.
        let word = u64::from_le_bytes(word);
        let flags =
            below(word, 0x20) | below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1);
        if flags != 0 {
            // At most 63 / 8: the cast cannot truncate.
            return Some(offset + (flags.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| escape_of(b) != 0).map(|at| offset + at)
}

/// `value`'s characters, escaped: runs that need nothing are copied whole.
fn escape_into(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    while let Some(at) = first_to_escape(rest) {
        let (plain, tail) = rest.split_at(at);
        out.extend_from_slice(plain);
        let Some((&byte, tail)) = tail.split_first() else { break };
        match escape_of(byte) {
            b'u' => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex_digit(byte >> 4), hex_digit(byte & 0xf)]),
            letter => out.extend_from_slice(&[b'\\', letter]),
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
}

/// `value`'s last `width` decimal digits, zero-padded.
pub fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for place in (0..width).rev() {
        // `% 10` keeps each digit below 10, so the cast cannot truncate.
        out.push(b'0' + (value / 10u32.pow(place) % 10) as u8);
    }
}

/// The lowercase hex digit for `n` (below 16).
fn hex_digit(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'a' + (n - 10)
    }
}

/// Escapes what is formatted through it.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every_char: String = (0u32..0x800).filter_map(char::from_u32).collect();
        for value in ["", "plain", "a\"b\\c", "\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}", "é😀", every_char.as_str()] {
            let mut out = Vec::new();
            string(&mut out, value);
            assert_eq!(out, serde_json::to_vec(value).unwrap(), "{value:?}");
        }
    }

    /// Every byte value at every position of every length up to three words, in
    /// plain ASCII and in UTF-8 continuation bytes, and after an earlier byte to
    /// escape: the word-at-a-time scan finds what a byte-at-a-time one finds.
    #[test]
    fn the_word_at_a_time_scan_finds_the_first_byte_a_byte_scan_finds() {
        let reference = |bytes: &[u8]| bytes.iter().position(|&b| escape_of(b) != 0);
        for background in [b'a', 0x80, 0xff, b' ', b'#', b'['] {
            for len in 0..=24 {
                for at in 0..len {
                    for byte in 0..=u8::MAX {
                        let mut bytes = vec![background; len];
                        bytes[at] = byte;
                        assert_eq!(first_to_escape(&bytes), reference(&bytes), "{bytes:?}");
                        // A second byte to escape after the first changes nothing.
                        if let Some(later) = bytes.get_mut(at + 1..) {
                            later.iter_mut().step_by(3).for_each(|b| *b = b'"');
                            assert_eq!(first_to_escape(&bytes), reference(&bytes), "{bytes:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_object_is_valid_json_with_its_fields_in_order() {
        let mut out = Vec::new();
        let mut object = Object::begin(&mut out);
        object
            .str("s", "x\"y")
            .opt_str("none", None)
            .int("n", -42i64)
            .opt_int("m", Some(7u64))
            .bool("b", true)
            .strs("list", &["a".to_owned(), "b\n".to_owned()])
            .strs("empty", &[])
            .display("shown", format_args!("{}:{}", "h\u{1}", 80))
            .object("inner", Some(3), |o, v| {
                o.int("v", v);
            })
            .object("absent", None::<u8>, |_, _| {});
        object.end();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"s":"x\"y","none":null,"n":-42,"m":7,"b":true,"list":["a","b\n"],"empty":[],"shown":"h\u0001:80","inner":{"v":3},"absent":null}"#
        );
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
}
