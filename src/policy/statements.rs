//! A policy file cut into batches of whole policies, so that parsing a file costs
//! memory in proportion to a batch and not to the file.
//!
//! Cedar's parser builds the concrete syntax tree of all the text it is given
//! before it converts any of it: 10,000 policies in one file (1.5 MB) took about
//! 100 MiB of transient heap, which glibc keeps as resident memory for the life of
//! the process. A policy ends at a `;` outside a string literal and a `//`
//! comment, and nowhere else in Cedar's grammar, so the text can be cut there
//! without understanding any more of it. Text that does not lex (an unterminated
//! string) simply stays in the batch it started in, and Cedar reports the error.

/// Text past which a batch is closed at the next end of a policy: about 300 small
/// policies, a few MiB of syntax tree while they are parsed.
pub const BATCH_BYTES: usize = 64 * 1024;

/// One batch: whole policies, `text[start..]` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Byte offset of the batch in the file, for the positions Cedar reports.
    pub start: usize,
    pub text: &'a str,
}

/// Cuts `text` into batches of whole policies of about `batch_bytes` each (one
/// policy may make a batch longer). Together they are exactly `text`.
pub fn batches(text: &str, batch_bytes: usize) -> Vec<Batch<'_>> {
    let mut batches = Vec::new();
    let mut start = 0;
    for end in policy_ends(text) {
        if end - start >= batch_bytes {
            batches.push(Batch { start, text: text.get(start..end).unwrap_or_default() });
            start = end;
        }
    }
    if start < text.len() || batches.is_empty() {
        batches.push(Batch { start, text: text.get(start..).unwrap_or_default() });
    }
    batches
}

/// The byte offsets just past each `;` that ends a policy.
fn policy_ends(text: &str) -> Vec<usize> {
    #[derive(PartialEq)]
    enum State {
        Code,
        String,
        Escape,
        Comment,
    }
    let mut ends = Vec::new();
    let mut state = State::Code;
    let mut bytes = text.bytes().enumerate().peekable();
    // Byte-wise is exact: `"`, `\`, `/`, `;` and `\n` never occur inside a
    // multi-byte UTF-8 sequence.
    while let Some((i, b)) = bytes.next() {
        state = match (state, b) {
            (State::Code, b'"') => State::String,
            (State::Code, b'/') if bytes.peek().is_some_and(|(_, next)| *next == b'/') => State::Comment,
            (State::Code, b';') => {
                ends.push(i + 1);
                State::Code
            }
            (State::String, b'\\') => State::Escape,
            (State::String, b'"') | (State::Comment, b'\n') => State::Code,
            (State::Escape, _) => State::String,
            (state, _) => state,
        };
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str, batch_bytes: usize) -> Vec<&str> {
        let batches = batches(text, batch_bytes);
        assert_eq!(batches.iter().map(|b| b.text).collect::<String>(), text);
        for b in &batches {
            assert_eq!(text.get(b.start..b.start + b.text.len()), Some(b.text));
        }
        batches.into_iter().map(|b| b.text).collect()
    }

    #[test]
    fn cuts_only_where_a_policy_ends() {
        let text = concat!(
            "@id(\"a;b\") permit (principal, action, resource) when { context.x == \"\\\";\" };\n",
            "// a comment; with \"a quote\n",
            "forbid (principal, action, resource) when { resource.path like \"*;*\" }; ",
            "permit (principal, action, resource);"
        );
        let parts = cut(text, 1);
        assert_eq!(parts.len(), 3, "{parts:#?}");
        assert!(parts[0].starts_with("@id(\"a;b\")") && parts[0].ends_with("\" };"));
        assert!(parts[1].starts_with("\n// a comment") && parts[1].ends_with("\"*;*\" };"));
        assert_eq!(parts[2], " permit (principal, action, resource);");
        // Every part parses on its own, as the whole does.
        for part in &parts {
            assert!(part.parse::<cedar_policy::PolicySet>().is_ok(), "{part}");
        }
    }

    #[test]
    fn batches_gather_policies_up_to_the_size() {
        let one = "permit (principal, action, resource);\n";
        let text = one.repeat(10);
        // A batch ends at a `;`: four policies are `4 * len - 1` bytes of it.
        let per_batch = |size| cut(&text, size).iter().map(|b| b.matches("permit").count()).collect::<Vec<_>>();
        assert_eq!(per_batch(one.len() * 4 - 1), [4, 4, 2]);
        assert_eq!(per_batch(one.len() * 4), [5, 4, 1]);
        assert_eq!(cut(&text, usize::MAX), [text.as_str()]);
    }

    #[test]
    fn text_that_does_not_lex_stays_in_one_batch() {
        let text = "permit (principal, action, resource);\npermit (principal, action, resource) when { \"open; };\n";
        let parts = cut(text, 1);
        assert_eq!(parts.len(), 2);
        assert!(parts[1].parse::<cedar_policy::PolicySet>().is_err());
        assert_eq!(cut("", 1), [""]);
        assert_eq!(cut("// only a comment;", 1), ["// only a comment;"]);
    }
}
