//! CSV readings, a record at a time, with exact physical line numbers.

use std::collections::VecDeque;

use backfill_core::Event;
use serde_json::{Map, Value};

use super::{InputError, bad, not_utf8, reserved, timestamp};

/// The input of the CSV reader: passes the bytes through, checking that they are UTF-8 and
/// keeping the places of the line breaks not yet looked up, so that a record's byte offset
/// (what the CSV reader knows) can be told as the physical line where it starts.
struct Tracked<R> {
    inner: R,
    /// Bytes passed through.
    offset: u64,
    /// Offset of the first byte of the line being passed.
    line_start: u64,
    /// Line breaks passed through.
    newlines: usize,
    /// Offsets of the CR and LF bytes after the last record looked up (true for LF).
    breaks: VecDeque<(u64, bool)>,
    /// LFs before `breaks`.
    newlines_before: usize,
    /// The start of a UTF-8 sequence cut by the end of the last read (at most 3 bytes).
    cut: Vec<u8>,
    /// The first byte that is not UTF-8, as an error to give; nothing is read past it.
    not_utf8: Option<InputError>,
    /// Offsets of the `"` bytes after the start of the last record looked up.
    quotes: VecDeque<u64>,
}

impl<R> Tracked<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            line_start: 0,
            newlines: 0,
            breaks: VecDeque::new(),
            newlines_before: 0,
            cut: Vec::new(),
            not_utf8: None,
            quotes: VecDeque::new(),
        }
    }

    /// The physical line (1-based) where the CSV record at byte `offset` starts. The reader
    /// ends a CRLF record at its CR, so its own positions can point at the LF before the
    /// record's first cell (and its line count then misses a line): line ends are skipped
    /// first. Offsets must not go back.
    fn line_at(&mut self, offset: u64) -> usize {
        while self.quotes.front().is_some_and(|&at| at < offset) {
            self.quotes.pop_front();
        }
        while let Some(&(at, lf)) = self.breaks.front() {
            if at >= offset {
                break;
            }
            self.newlines_before += usize::from(lf);
            self.breaks.pop_front();
        }
        // The line ends right at `offset`: consecutive offsets from it.
        let skipped = (offset..)
            .zip(&self.breaks)
            .take_while(|(next, (at, _))| at == next)
            .filter(|(_, (_, lf))| *lf)
            .count();
        self.newlines_before + skipped + 1
    }

    /// How many bytes at the start of `bytes` (which follow `self.cut`) are UTF-8, leaving the
    /// start of a sequence cut at the end in `self.cut`; `None` when all are, `Some(i)` when
    /// the byte at `i` is not (or at 0 for a bad sequence begun in `self.cut`).
    fn check_utf8(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        if !self.cut.is_empty() {
            // Complete the cut sequence with the first bytes of this read.
            let width = match self.cut[0] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            from = (width - self.cut.len()).min(bytes.len());
            self.cut.extend_from_slice(&bytes[..from]);
            if self.cut.len() == width {
                if std::str::from_utf8(&self.cut).is_err() {
                    return Some(0);
                }
                self.cut.clear();
            } else if bytes.is_empty() {
                // The input ends inside the sequence.
                return Some(0);
            }
        }
        match std::str::from_utf8(&bytes[from..]) {
            Ok(_) => None,
            Err(e) if e.error_len().is_none() => {
                self.cut.extend_from_slice(&bytes[from + e.valid_up_to()..]);
                None
            }
            Err(e) => Some(from + e.valid_up_to()),
        }
    }

    /// Counts the line breaks and the quotes of bytes passed through.
    fn pass(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'"' {
                self.quotes.push_back(self.offset + i as u64);
            }
            if matches!(b, b'\r' | b'\n') {
                let at = self.offset + i as u64;
                self.breaks.push_back((at, *b == b'\n'));
                if *b == b'\n' {
                    self.newlines += 1;
                    self.line_start = at + 1;
                }
            }
        }
        self.offset += bytes.len() as u64;
    }
}

impl<R: std::io::Read> std::io::Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let refuse = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8");
        if self.not_utf8.is_some() {
            return Err(refuse());
        }
        let n = self.inner.read(buf)?;
        let carried = self.cut.len() as u64;
        let bad_at = self.check_utf8(&buf[..n]);
        let good = bad_at.unwrap_or(n);
        self.pass(&buf[..good]);
        if let Some(i) = bad_at {
            // A bad sequence begun in the last read starts before this one.
            let at = if i == 0 {
                self.offset.saturating_sub(carried)
            } else {
                self.offset
            };
            let column = at.saturating_sub(self.line_start) as usize;
            self.not_utf8 = Some(not_utf8(self.newlines + 1, column));
            if good == 0 {
                return Err(refuse());
            }
        }
        Ok(good)
    }
}

/// CSV readings, a record at a time, with a header: `name` is required, `timestamp`,
/// `device_id` and `insert_id` are optional, every other column is a property (numbers and
/// booleans are read as such).
pub struct Csv<R> {
    reader: csv::Reader<Tracked<R>>,
    headers: csv::StringRecord,
    name_col: usize,
    time_col: Option<usize>,
    device_col: Option<usize>,
    insert_col: Option<usize>,
    /// The last record read (reused).
    record: csv::StringRecord,
    /// Records read, the header included.
    records: usize,
    /// An error was given: nothing follows.
    done: bool,
    /// Whether the last record has a cell holding a line break, and the line it starts on.
    last: (bool, usize),
}

impl<R: std::io::Read> Csv<R> {
    /// Reads and checks the header.
    pub(super) fn new(input: R) -> Result<Self, InputError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(Tracked::new(input));
        let headers = match reader.headers() {
            Ok(headers) => headers.clone(),
            Err(e) => {
                return Err(reader
                    .get_mut()
                    .not_utf8
                    .take()
                    .unwrap_or_else(|| bad(1, format!("bad CSV header: {e}"))));
            }
        };
        // A column without a name, or two of one name, would lose values silently.
        for (c, header) in headers.iter().enumerate() {
            if header.is_empty() {
                return Err(bad(
                    1,
                    format!("column {} of the CSV header has no name", c + 1),
                ));
            }
            if let Some(why) = reserved(header) {
                return Err(bad(1, why));
            }
            if headers.iter().take(c).any(|h| h == header) {
                return Err(bad(1, format!("the CSV header names {header:?} twice")));
            }
        }
        let column = |name: &str| headers.iter().position(|h| h == name);
        let name_col =
            column("name").ok_or_else(|| bad(1, "the CSV header has no \"name\" column"))?;
        Ok(Self {
            time_col: column("timestamp"),
            device_col: column("device_id"),
            insert_col: column("insert_id"),
            name_col,
            headers,
            reader,
            record: csv::StringRecord::new(),
            records: 1,
            done: false,
            last: (false, 1),
        })
    }

    /// The next record as a reading, with its line.
    fn read(&mut self) -> Result<Option<(usize, Event)>, InputError> {
        let next = self.reader.read_record(&mut self.record);
        self.records += 1;
        let more = next.map_err(|e| {
            if let Some(not_utf8) = self.reader.get_mut().not_utf8.take() {
                return not_utf8;
            }
            let line = match e.position() {
                Some(p) => self.reader.get_mut().line_at(p.byte()),
                None => self.records,
            };
            // The reader's own text names its own line count; this one is exact.
            let message = match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!(
                    "{len} cells where the header has {expected_len} (a quote left open, or a \
                     comma in a cell that is not quoted?)"
                ),
                _ => format!("bad CSV row: {e}"),
            };
            bad(line, message)
        })?;
        if !more {
            // A quote left open in the last record runs to the end of the input, which the
            // reader takes as one long cell, the readings after it included. Its quotes
            // (the bytes since its start) are then odd in number, and a cell holds a line break.
            let (open, line) = self.last;
            if open && self.reader.get_ref().quotes.len() % 2 == 1 {
                return Err(bad(
                    line,
                    "a quote opened in this row is never closed: the rest of the input would be \
                     one cell",
                ));
            }
            return Ok(None);
        }
        let record = &self.record;
        let n = match record.position() {
            Some(p) => self.reader.get_mut().line_at(p.byte()),
            None => self.records,
        };
        self.last = (record.iter().any(|f| f.contains(['\n', '\r'])), n);
        let name = record
            .get(self.name_col)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(n, "empty name"))?
            .to_owned();
        let timestamp_ms = match self
            .time_col
            .and_then(|c| record.get(c))
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(t) => Some(timestamp(t).map_err(|e| bad(n, e))?),
        };
        let text = |col: Option<usize>| {
            col.and_then(|c| record.get(c))
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let device_id = text(self.device_col);
        let insert_id = text(self.insert_col);
        let mut properties = Map::new();
        for (c, (header, field)) in self.headers.iter().zip(record.iter()).enumerate() {
            if c == self.name_col
                || Some(c) == self.time_col
                || Some(c) == self.device_col
                || Some(c) == self.insert_col
                || field.is_empty()
            {
                continue;
            }
            properties.insert(header.to_owned(), cell(field));
        }
        Ok(Some((
            n,
            Event {
                name,
                properties,
                timestamp_ms,
                device_id,
                insert_id,
            },
        )))
    }
}

impl<R: std::io::Read> Iterator for Csv<R> {
    type Item = Result<(usize, Event), InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.read().transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

/// A CSV cell's value: a number only when the number reads back as exactly the same text (so
/// `007`, `1e3`, `+5` and `89014103211118510720`, an ICCID, stay strings), `true`/`false` as
/// booleans, anything else as the string it is.
fn cell(field: &str) -> Value {
    if let Ok(i) = field.parse::<i64>()
        && i.to_string() == field
    {
        return Value::from(i);
    }
    if let Ok(f) = field.parse::<f64>()
        && f.is_finite()
    {
        let number = Value::from(f);
        // Compared as text: `Value == &str` would compare with a JSON string instead.
        let text = number.to_string();
        if text.as_str() == field {
            return number;
        }
    }
    match field {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(field.to_owned()),
    }
}
