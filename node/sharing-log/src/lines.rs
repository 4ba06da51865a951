//! Reading a log file forwards line by line, as verification and export do, with the
//! line numbers errors name.

use crate::error::{AuditError, io_err};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Reads a log's lines with their numbers (from 1), without the newline. A final line
/// without its newline is reported apart, unread.
pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    number: usize,
    path: PathBuf,
}

pub(crate) enum Line<'a> {
    Complete(usize, &'a [u8]),
    Partial,
    End,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn next_line(&mut self) -> Result<Line<'_>, AuditError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(Line::End);
        }
        if self.buf.last() != Some(&b'\n') {
            return Ok(Line::Partial);
        }
        self.number += 1;
        self.buf.pop();
        Ok(Line::Complete(self.number, &self.buf))
    }
}

pub(crate) fn open_lines(path: &Path) -> Result<Lines<BufReader<File>>, AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    Ok(Lines {
        reader: BufReader::with_capacity(256 * 1024, file),
        buf: Vec::new(),
        number: 0,
        path: path.to_owned(),
    })
}
