//! Text as it arrives in files from Vietnamese offices: Excel in a
//! Vietnamese locale saves "CSV" separated by `;`, in Windows-1258 (whose
//! tone marks are combining characters) or UTF-16; keyboards and macOS send
//! decomposed (NFD) text. Everything an import stores, and every key and
//! filter a query compares, is NFC, so the same words always match.

use serde_json::{Map, Value};
use std::fmt;
use std::io::Read;
use std::str::FromStr;
use unicode_normalization::{UnicodeNormalization, is_nfc};

/// How many bytes of a file are read to guess its encoding and separator.
const SNIFF_BYTES: usize = 64 << 10;

/// `s` in Unicode Normalization Form C.
pub(crate) fn nfc(s: &str) -> String {
    if is_nfc(s) {
        s.to_owned()
    } else {
        s.nfc().collect()
    }
}

/// A JSON value with every string and object key in NFC.
pub(crate) fn nfc_value(value: Value) -> Value {
    match value {
        Value::String(s) if !is_nfc(&s) => Value::String(s.nfc().collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(nfc_value).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (nfc(&k), nfc_value(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

/// The character encoding of an imported file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextEncoding {
    /// UTF-8, with or without a byte order mark.
    Utf8,
    /// UTF-16, little-endian (what Excel's "Unicode Text" writes).
    Utf16Le,
    /// UTF-16, big-endian.
    Utf16Be,
    /// Windows-1258, the Vietnamese Windows code page.
    Windows1258,
}

impl TextEncoding {
    fn encoding(self) -> &'static encoding_rs::Encoding {
        match self {
            Self::Utf8 => encoding_rs::UTF_8,
            Self::Utf16Le => encoding_rs::UTF_16LE,
            Self::Utf16Be => encoding_rs::UTF_16BE,
            Self::Windows1258 => encoding_rs::WINDOWS_1258,
        }
    }
}

impl fmt::Display for TextEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Utf8 => "utf-8",
            Self::Utf16Le => "utf-16le",
            Self::Utf16Be => "utf-16be",
            Self::Windows1258 => "windows-1258",
        })
    }
}

impl FromStr for TextEncoding {
    type Err = String;

    /// `utf-8`, `utf-16` (little-endian unless the file's byte order mark
    /// says otherwise), `utf-16le`, `utf-16be`, `windows-1258` (`cp1258`);
    /// any case.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Self::Utf8,
            "utf-16" | "utf16" | "utf-16le" | "utf16le" => Self::Utf16Le,
            "utf-16be" | "utf16be" => Self::Utf16Be,
            "windows-1258" | "cp1258" | "cp-1258" | "1258" => Self::Windows1258,
            _ => {
                return Err(format!(
                    "unknown encoding {s:?}; use utf-8, utf-16, utf-16le, utf-16be or windows-1258"
                ));
            }
        })
    }
}

/// How a file's text is read: its encoding and, for CSV, its separator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextFormat {
    /// The character encoding.
    pub encoding: TextEncoding,
    /// The CSV field separator (`,`, `;` or a tab); `,` for JSON Lines.
    pub delimiter: u8,
}

impl fmt::Display for TextFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = match self.delimiter {
            b'\t' => "tab".to_owned(),
            d => format!("'{}'", d as char),
        };
        write!(f, "{}, {sep}-separated", self.encoding)
    }
}

/// The encoding of a file whose first bytes are `head`: a byte order
/// mark says; otherwise NUL bytes in every other place mean UTF-16, valid
/// UTF-8 means UTF-8, and anything else is taken for Windows-1258.
pub(crate) fn sniff_encoding(head: &[u8]) -> TextEncoding {
    if head.starts_with(b"\xFF\xFE") {
        return TextEncoding::Utf16Le;
    }
    if head.starts_with(b"\xFE\xFF") {
        return TextEncoding::Utf16Be;
    }
    let pairs = head.len() / 2;
    if pairs >= 2 {
        let odd = head.chunks_exact(2).filter(|p| p[1] == 0).count();
        let even = head.chunks_exact(2).filter(|p| p[0] == 0).count();
        if odd * 3 >= pairs * 2 {
            return TextEncoding::Utf16Le;
        }
        if even * 3 >= pairs * 2 {
            return TextEncoding::Utf16Be;
        }
    }
    match std::str::from_utf8(head) {
        Ok(_) => TextEncoding::Utf8,
        // A character cut at the end of what was read is still UTF-8.
        Err(e) if e.error_len().is_none() => TextEncoding::Utf8,
        // UTF-8 letters beside a bad byte: a damaged UTF-8 file, whose bad
        // rows are better named than misread.
        Err(_)
            if String::from_utf8_lossy(head)
                .chars()
                .any(|c| !c.is_ascii() && c != char::REPLACEMENT_CHARACTER) =>
        {
            TextEncoding::Utf8
        }
        Err(_) => TextEncoding::Windows1258,
    }
}

/// The separator of a CSV file whose start, decoded, is `head`: the most
/// frequent of `,`, `;` and tab outside quotes in its first line (`,` when
/// none appears).
pub(crate) fn sniff_delimiter(head: &str) -> u8 {
    let first = head.lines().next().unwrap_or("");
    let mut counts = [(b',', 0), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for c in first.bytes() {
        if c == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(slot) = counts.iter_mut().find(|(d, _)| *d == c) {
            slot.1 += 1;
        }
    }
    // The first of the most frequent: a comma wins a tie.
    let best = counts
        .iter()
        .fold(counts[0], |best, &c| if c.1 > best.1 { c } else { best });
    best.0
}

/// Reads the start of `file` and guesses what was not given.
pub(crate) fn sniff(
    file: &std::path::Path,
    csv: bool,
    encoding: Option<TextEncoding>,
    delimiter: Option<u8>,
) -> std::io::Result<TextFormat> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(file)?
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    let encoding = encoding.unwrap_or_else(|| sniff_encoding(&head));
    let delimiter = match delimiter {
        Some(d) => d,
        None if csv => {
            let (text, _) = encoding.encoding().decode_with_bom_removal(&head);
            sniff_delimiter(&text)
        }
        None => b',',
    };
    Ok(TextFormat {
        encoding,
        delimiter,
    })
}

/// Reads `inner` in `encoding` as UTF-8 (dropping a byte order mark).
pub(crate) struct Decode<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    output: Vec<u8>,
    out_start: usize,
    out_end: usize,
}

impl<R: Read> Decode<R> {
    pub(crate) fn new(inner: R, encoding: TextEncoding) -> Self {
        Self {
            inner,
            decoder: encoding.encoding().new_decoder_with_bom_removal(),
            input: vec![0; 1 << 16],
            start: 0,
            end: 0,
            eof: false,
            done: false,
            output: vec![0; 1 << 17],
            out_start: 0,
            out_end: 0,
        }
    }
}

impl<R: Read> Read for Decode<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.out_start < self.out_end {
                let n = buf.len().min(self.out_end - self.out_start);
                buf[..n].copy_from_slice(&self.output[self.out_start..self.out_start + n]);
                self.out_start += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if self.start == self.end && !self.eof {
                let n = self.inner.read(&mut self.input)?;
                self.start = 0;
                self.end = n;
                self.eof = n == 0;
            }
            let (result, read, written, _) = self.decoder.decode_to_utf8(
                &self.input[self.start..self.end],
                &mut self.output,
                self.eof,
            );
            self.start += read;
            self.out_start = 0;
            self.out_end = written;
            if self.eof && result == encoding_rs::CoderResult::InputEmpty {
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_and_separators_are_guessed_from_the_start_of_the_file() {
        assert_eq!(sniff_encoding("ma,tên\n".as_bytes()), TextEncoding::Utf8);
        assert_eq!(sniff_encoding(b"\xFF\xFEm\0a\0"), TextEncoding::Utf16Le);
        assert_eq!(sniff_encoding(b"m\0a\0;\0t\0"), TextEncoding::Utf16Le);
        assert_eq!(sniff_encoding(b"\0m\0a\0;\0t"), TextEncoding::Utf16Be);
        // "Hà Nội" in Windows-1258: à is E0, ô is F4, then a combining dot.
        assert_eq!(
            sniff_encoding(b"H\xE0 N\xF4\xF2i"),
            TextEncoding::Windows1258
        );
        // A UTF-8 file with one bad byte is still UTF-8.
        assert_eq!(sniff_encoding(b"Xu\xC3\xA2n B\xECnh"), TextEncoding::Utf8);
        // Cut in the middle of "ộ".
        assert_eq!(sniff_encoding(&"Hộ".as_bytes()[..3]), TextEncoding::Utf8);
        assert_eq!(sniff_delimiter("ma;ten;\"a,b\"\n1;2;3"), b';');
        assert_eq!(sniff_delimiter("ma,ten\n"), b',');
        assert_eq!(sniff_delimiter("ma\tten\n"), b'\t');
        assert_eq!(sniff_delimiter("ma\n"), b',');
        assert_eq!("CP1258".parse(), Ok(TextEncoding::Windows1258));
        assert!("latin-9".parse::<TextEncoding>().is_err());
    }

    #[test]
    fn a_decoder_reads_windows_1258_and_utf_16_in_small_pieces() {
        let mut text = String::new();
        let mut cp1258 = Decode::new(&b"H\xE0 N\xF4\xF2i"[..], TextEncoding::Windows1258);
        let mut byte = [0u8; 1];
        let mut bytes = Vec::new();
        while cp1258.read(&mut byte).unwrap() == 1 {
            bytes.push(byte[0]);
        }
        text.push_str(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(nfc(&text), "Hà Nội");
        let utf16: Vec<u8> = "\u{FEFF}Hộ tịch"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let mut out = String::new();
        Decode::new(&utf16[..], TextEncoding::Utf16Le)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "Hộ tịch");
    }
}
