//! The lines of a codes file, read one at a time: a code per line, or the first column
//! of a CSV whose first line is a header (it has a comma). Each line becomes a code or
//! the reason it is not one; memory holds one line, at most [`MAX_LINE`] bytes, and
//! never the file.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead};

use crate::domain::codes::MAX_CODE_LEN;

/// The longest line read; a longer one is invalid as a whole and skipped unread, so
/// that a file without line breaks cannot fill the memory.
pub const MAX_LINE: usize = 4096;

/// Why a line holds no code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Nothing, or only spaces (blank lines at the very end of the file are ignored).
    Empty,
    /// More than [`MAX_CODE_LEN`] bytes: how many.
    TooLong(usize),
    /// A control character (a tab, an escape, a NUL…) inside the code.
    Control(char),
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// A line over [`MAX_LINE`] bytes.
    LineTooLong,
    /// A CSV first field that opens a quote and never closes it.
    OpenQuote,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Empty => write!(f, "empty"),
            Invalid::TooLong(n) => write!(f, "over {MAX_CODE_LEN} bytes ({n})"),
            Invalid::Control(c) => write!(f, "control character U+{:04X}", *c as u32),
            Invalid::NotUtf8 => write!(f, "not UTF-8"),
            Invalid::LineTooLong => write!(f, "line over {MAX_LINE} bytes"),
            Invalid::OpenQuote => write!(f, "a quote opened and not closed"),
        }
    }
}

/// One line of the file: its number (1-based, counting a CSV header) and its code, or
/// why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based.
    pub number: u64,
    /// The code, trimmed.
    pub code: Result<String, Invalid>,
}

/// Reads codes from `input` line by line (see the module docs).
pub struct Lines<R> {
    input: R,
    buf: Vec<u8>,
    /// Lines read so far.
    number: u64,
    /// True once the first line showed a CSV header.
    csv: bool,
    /// Blank lines held back (the first one's number, and how many): invalid if a line
    /// with something on it follows, ignored at the end of the file.
    blanks: Option<(u64, u64)>,
    /// The line read after held-back blanks, given once they are.
    pending: Option<Line>,
}

/// Where the first field of a CSV line ends.
enum Field<'a> {
    /// Within the text: the field, unquoted.
    Ends(Cow<'a, str>),
    /// It runs to the end of the text; `quoted` if it opened a quote.
    Open { quoted: bool },
}

impl<R: BufRead> Lines<R> {
    /// A reader of `input`.
    pub fn new(input: R) -> Self {
        Lines {
            input,
            buf: Vec::new(),
            number: 0,
            csv: false,
            blanks: None,
            pending: None,
        }
    }

    /// The next line with a code or a reason, `None` at the end of the file.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let (Some((first, count)), Some(_)) = (self.blanks, &self.pending) {
                // Something followed these blanks: each is an empty code, in line order.
                self.blanks = (count > 1).then_some((first + 1, count - 1));
                return Ok(Some(Line {
                    number: first,
                    code: Err(Invalid::Empty),
                }));
            }
            if let Some(line) = self.pending.take() {
                return Ok(Some(line));
            }
            // At the end, blanks still held back are the file's trailing blank lines.
            let Some(fits) = self.read_raw()? else {
                return Ok(None);
            };
            self.number += 1;
            if self.number == 1 {
                if let Some(rest) = self.buf.strip_prefix("\u{feff}".as_bytes()) {
                    self.buf = rest.to_vec();
                }
                if self.buf.contains(&b',') {
                    self.csv = true;
                    continue;
                }
            }
            if fits && self.buf.iter().all(u8::is_ascii_whitespace) {
                let first = self.blanks.map_or(self.number, |(first, _)| first);
                self.blanks = Some((first, self.number - first + 1));
                continue;
            }
            let code = match fits {
                true => self.code(),
                false => Err(Invalid::LineTooLong),
            };
            self.pending = Some(Line {
                number: self.number,
                code,
            });
        }
    }

    /// Reads the next line into `buf` without its line break: `None` at the end of the
    /// file, `Some(false)` for a line over [`MAX_LINE`] bytes (the rest of it skipped).
    fn read_raw(&mut self) -> io::Result<Option<bool>> {
        self.buf.clear();
        let limit = MAX_LINE as u64 + 1;
        let n = io::Read::take(&mut self.input, limit).read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if n > MAX_LINE {
            self.skip_rest()?;
            return Ok(Some(false));
        }
        Ok(Some(true))
    }

    /// Skips to the start of the next line.
    fn skip_rest(&mut self) -> io::Result<()> {
        loop {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Ok(());
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.input.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = available.len();
                    self.input.consume(n);
                }
            }
        }
    }

    /// The code on the line in `buf`, or why there is none. In a CSV, bytes that are
    /// not UTF-8 after the first field do not matter.
    fn code(&self) -> Result<String, Invalid> {
        let (text, whole) = match std::str::from_utf8(&self.buf) {
            Ok(text) => (text, true),
            Err(e) => {
                let valid = &self.buf[..e.valid_up_to()];
                (std::str::from_utf8(valid).unwrap_or_default(), false)
            }
        };
        if !self.csv {
            return if whole {
                check(text)
            } else {
                Err(Invalid::NotUtf8)
            };
        }
        match first_field(text) {
            Field::Ends(field) => check(&field),
            Field::Open { .. } if !whole => Err(Invalid::NotUtf8),
            Field::Open { quoted: true } => Err(Invalid::OpenQuote),
            Field::Open { quoted: false } => check(text),
        }
    }
}

/// The first field of a CSV line: up to the first comma, or a quoted `"…"` with `""`
/// for a quote inside (what follows the closing quote up to the comma is ignored).
fn first_field(text: &str) -> Field<'_> {
    let Some(quoted) = text.trim_start().strip_prefix('"') else {
        return match text.find(',') {
            Some(i) => Field::Ends(Cow::Borrowed(&text[..i])),
            None => Field::Open { quoted: false },
        };
    };
    let mut field = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            field.push(c);
        } else if chars.as_str().starts_with('"') {
            chars.next();
            field.push('"');
        } else {
            return Field::Ends(Cow::Owned(field));
        }
    }
    Field::Open { quoted: true }
}

/// `text`, trimmed, as a code: not empty, at most [`MAX_CODE_LEN`] bytes, no control
/// characters.
pub fn check(text: &str) -> Result<String, Invalid> {
    let code = text.trim();
    if code.is_empty() {
        return Err(Invalid::Empty);
    }
    if code.len() > MAX_CODE_LEN {
        return Err(Invalid::TooLong(code.len()));
    }
    if let Some(c) = code.chars().find(|c| c.is_control()) {
        return Err(Invalid::Control(c));
    }
    Ok(code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8]) -> Vec<(u64, Result<String, Invalid>)> {
        let mut lines = Lines::new(text);
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            out.push((line.number, line.code));
        }
        out
    }

    fn ok(number: u64, code: &str) -> (u64, Result<String, Invalid>) {
        (number, Ok(code.to_owned()))
    }

    #[test]
    fn one_code_per_line_trimmed_with_either_line_break() {
        let got = read(b"ABC\r\n  DEF  \nGHI");
        assert_eq!(got, [ok(1, "ABC"), ok(2, "DEF"), ok(3, "GHI")]);
    }

    #[test]
    fn blank_lines_are_empty_codes_except_at_the_very_end() {
        let got = read(b"A\n\n  \nB\n\n \r\n\n");
        assert_eq!(
            got,
            [
                ok(1, "A"),
                (2, Err(Invalid::Empty)),
                (3, Err(Invalid::Empty)),
                ok(4, "B"),
            ]
        );
        assert_eq!(read(b""), []);
        assert_eq!(read(b"\n\n"), []);
    }

    #[test]
    fn too_long_control_characters_and_bad_utf8_are_invalid() {
        let long = "X".repeat(MAX_CODE_LEN + 1);
        let most = "Y".repeat(MAX_CODE_LEN);
        let text = format!("{long}\n{most}\nA\u{7}B\nA\tB\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let got = read(&bytes);
        assert_eq!(
            got,
            [
                (1, Err(Invalid::TooLong(MAX_CODE_LEN + 1))),
                ok(2, &most),
                (3, Err(Invalid::Control('\u{7}'))),
                (4, Err(Invalid::Control('\t'))),
                (5, Err(Invalid::NotUtf8)),
            ]
        );
    }

    #[test]
    fn a_line_over_the_limit_is_skipped_unread() {
        let mut bytes = vec![b'Z'; MAX_LINE * 3];
        bytes.extend_from_slice(b"\nNEXT\n");
        assert_eq!(
            read(&bytes),
            [(1, Err(Invalid::LineTooLong)), ok(2, "NEXT")]
        );
    }

    #[test]
    fn a_csv_header_makes_the_first_column_the_code() {
        let text = "\u{feff}code,batch\nABC,1\n\"Q,\"\"X\"\"\" , 2\n ,3\n\"open,4\nPLAIN\n";
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"DEF,\xff\n");
        let got = read(&bytes);
        assert_eq!(
            got,
            [
                ok(2, "ABC"),
                ok(3, "Q,\"X\""),
                (4, Err(Invalid::Empty)),
                (5, Err(Invalid::OpenQuote)),
                ok(6, "PLAIN"),
                ok(7, "DEF"),
            ]
        );
    }

    #[test]
    fn a_first_line_without_a_comma_is_a_code() {
        assert_eq!(read(b"\xef\xbb\xbfcode\nA\n"), [ok(1, "code"), ok(2, "A")]);
    }
}
