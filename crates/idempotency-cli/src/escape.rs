//! Text for an operator's terminal: keys, operations, owner tokens and stored values
//! are chosen by clients and may hold control characters (escape sequences that set a
//! window title, clear the screen or forge a hyperlink, `\r` that overwrites a row) or
//! bidirectional overrides that reorder what is shown. Every human-readable line goes
//! through [`line`](fn@line); every value inside one through [`field`].

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a terminal would act on `c` rather than show it: C0 and C1 controls, DEL,
/// the bidirectional marks and overrides, and the Unicode line separators.
fn acts(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| acts(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts(c) && !keep(c) {
            // `\uXXXX`: readable, and a valid escape inside the JSON lines too.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A whole output line (or block): everything a terminal acts on is escaped except the
/// line breaks and tabs the output itself is laid out with.
pub(crate) fn line(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// One value inside a line: line breaks and tabs escaped too, so a key cannot start a
/// row of its own.
pub(crate) fn field(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

#[cfg(test)]
mod tests {
    use super::{field, line};

    #[test]
    fn what_a_terminal_acts_on_is_shown_escaped() {
        assert_eq!(field("a\u{1b}]0;pwned\u{7}b"), "a\\u001b]0;pwned\\u0007b");
        assert_eq!(field("row\rforged\nline"), "row\\u000dforged\\u000aline");
        assert_eq!(field("\u{202e}txt.exe"), "\\u202etxt.exe");
        assert_eq!(field("\u{9b}31m"), "\\u009b31m");
        assert_eq!(line("a\nb\tc\u{1b}[2J"), "a\nb\tc\\u001b[2J");
        assert_eq!(field("plain é 中"), "plain é 中");
    }
}
