//! The peer's side of one WebSocket connection, sans I/O: the bytes of each read in, the
//! messages, control frames, Close and failure they completed out, as a list of
//! `(kind, a, b)` tuples. `FrameReader` in `python/wse_fast/_pure.py` is the reference.
//!
//! A stranger's bytes: given a budget (what a connection not yet accepted may still send),
//! the reader counts every byte fed, reads no byte past it and then stops (`done`,
//! `over_budget`) with an `EVENT_OVER_BUDGET` event: close 1008. `lift_budget` (the
//! connection is accepted) leaves one test of an `Option` per read.
//!
//! Memory: only an unfinished frame's bytes and an unfinished fragmented message's payload
//! are kept, in vectors given back (not just cleared) once they complete, so that an idle
//! connection holds no buffer and a large message leaves nothing behind.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::inflate::{InflateError, Inflater};
use crate::masking;
use crate::utf8;

const EVENT_FAIL: u8 = 0x00;
const EVENT_FAIL_IN_CLOSE: u8 = 0x18;
const EVENT_OVER_BUDGET: u8 = 0x19;
/// RFC 6455 §7.4.1: 1008, the code a stranger past its budget is closed with.
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const OVER_BUDGET_REASON: &str = "too much data before authentication";
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const RSV1: u8 = 0x40;

/// RFC 6455 §7.4: the codes a Close frame may carry.
fn close_allowed(code: u16) -> bool {
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

/// What `frame_at` found at a position.
enum Step {
    /// A frame reaching this many bytes on (past the input for one skipped after a failure).
    Read(usize),
    /// The frame is not all there yet.
    Unfinished,
    /// The reader is done.
    Done,
}

#[pyclass(module = "wse_fast._codec")]
pub struct FrameReader {
    #[pyo3(get, set)]
    max_message_size: usize,
    #[pyo3(get, set)]
    client_frames: bool,
    #[pyo3(get, set)]
    compression: bool,
    /// A failure has been reported: only a Close is still looked for.
    #[pyo3(get)]
    failed: bool,
    /// A Close has been read, or frames cannot be told apart: nothing more is read.
    #[pyo3(get)]
    done: bool,
    /// Bytes the peer may still send (None: no bound); counted as they are fed.
    #[pyo3(get)]
    budget: Option<u64>,
    /// The budget ran out: the reader stopped there (`done`) until `lift_budget`.
    #[pyo3(get)]
    over_budget: bool,
    /// With `over_budget`: the bytes of the last read it left unread (not kept).
    #[pyo3(get)]
    unread: u64,
    frame: Vec<u8>,
    skip: u64,
    message: Option<Vec<u8>>,
    opcode: u8,
    compressed: bool,
    utf8: Option<utf8::Incremental>,
    /// The fragmented message's payload bytes as sent so far (what `max_message_size`
    /// bounds; `message` holds them inflated when the reader inflates).
    received: u64,
    /// Set by `inflate_messages`: compressed messages are inflated here.
    inflater: Option<Inflater>,
    /// The largest size a compressed message may inflate to.
    #[pyo3(get, set)]
    inflate_limit: usize,
    /// What all compressed messages together may still inflate to (None: no bound).
    #[pyo3(get, set)]
    inflate_budget: Option<u64>,
}

type Events<'a, 'py> = &'a Bound<'py, PyList>;

#[pymethods]
impl FrameReader {
    #[new]
    #[pyo3(signature = (max_message_size, client_frames=true, compression=false, budget=None))]
    fn new(
        max_message_size: usize,
        client_frames: bool,
        compression: bool,
        budget: Option<u64>,
    ) -> Self {
        Self {
            max_message_size,
            client_frames,
            compression,
            failed: false,
            done: false,
            budget,
            over_budget: false,
            unread: 0,
            frame: Vec::new(),
            skip: 0,
            message: None,
            opcode: 0,
            compressed: false,
            utf8: None,
            received: 0,
            inflater: None,
            inflate_limit: max_message_size,
            inflate_budget: None,
        }
    }

    /// permessage-deflate was agreed and this reader inflates: compressed messages come out
    /// inflated (`compressed` false), each at most `limit` bytes (1009 at the byte past
    /// it) and all of them together at most `budget` (1008 past it), with a context per
    /// message or, with `takeover`, one kept across messages within `window_bits`.
    #[pyo3(signature = (window_bits, takeover, limit, budget=None))]
    fn inflate_messages(
        &mut self,
        window_bits: u8,
        takeover: bool,
        limit: usize,
        budget: Option<u64>,
    ) -> PyResult<()> {
        if !(8..=15).contains(&window_bits) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "window_bits must be 8..15",
            ));
        }
        self.compression = true;
        self.inflater = Some(Inflater::new(window_bits, takeover));
        self.inflate_limit = limit;
        self.inflate_budget = budget;
        Ok(())
    }

    /// Bytes held for an unfinished frame or message.
    #[getter]
    fn buffered(&self) -> usize {
        self.frame.len() + self.message.as_ref().map_or(0, Vec::len)
    }

    /// The connection is accepted: no bound on its bytes from now on. A reader that stopped
    /// at its budget reads on from the next `feed`, which should bring the `unread` bytes.
    fn lift_budget(&mut self) {
        self.budget = None;
    }

    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        if self.done {
            if !self.over_budget || self.budget.is_some() {
                return Ok(events);
            }
            // stopped at a budget lifted since: read on
            self.done = false;
            self.over_budget = false;
            self.unread = 0;
        }
        let buf = crate::contiguous(data)?;
        let mut input = unsafe { crate::view(&buf) };
        if input.is_empty() {
            return Ok(events);
        }
        let mut unread = 0;
        if let Some(left) = self.budget {
            // every byte fed counts; none past the budget is read (nor kept)
            let size = input.len() as u64;
            if size > left {
                unread = size - left;
                input = &input[..left as usize];
                self.budget = Some(0);
            } else {
                self.budget = Some(left - size);
            }
        }
        self.read(py, input, &events)?;
        if unread > 0 && !self.done {
            // after what the bytes within the budget completed: the stranger's decision
            self.done = true;
            self.over_budget = true;
            self.unread = unread;
            events.append((
                EVENT_OVER_BUDGET,
                CLOSE_POLICY_VIOLATION,
                OVER_BUDGET_REASON,
            ))?;
        }
        Ok(events)
    }
}

impl FrameReader {
    /// Reads the frames in `input` (what is kept of an unfinished frame first).
    fn read(&mut self, py: Python<'_>, mut input: &[u8], events: Events) -> PyResult<()> {
        if input.is_empty() {
            return Ok(());
        }
        if self.skip > 0 {
            if self.skip >= input.len() as u64 {
                self.skip -= input.len() as u64;
                return Ok(());
            }
            input = &input[self.skip as usize..];
            self.skip = 0;
        }
        // The bytes to read: what was kept of an unfinished frame and this read, or this
        // read alone (the common case: no copy).
        let mut joined = None;
        if !self.frame.is_empty() {
            let mut all = std::mem::take(&mut self.frame);
            all.extend_from_slice(input);
            joined = Some(all);
        }
        let bytes: &[u8] = joined.as_deref().unwrap_or(input);
        let size = bytes.len() as u64;
        let mut pos: u64 = 0;
        let mut keep_from = None;
        while pos < size && !self.done {
            match self.frame_at(py, bytes, pos as usize, events)? {
                Step::Read(used) => pos += used as u64,
                Step::Unfinished => {
                    keep_from = Some(pos as usize);
                    break;
                }
                Step::Done => break,
            }
        }
        if let Some(from) = keep_from {
            // An unfinished frame: its bytes kept (moved, when they were kept already). Its
            // room grows with what arrives (Vec doubles it), never to the size its header
            // declares: a peer that declares a large frame and trickles it (a stranger, whose
            // bytes are capped far below max_message_size) holds no more than about twice
            // what it sent, in resident or in virtual memory.
            self.frame = match joined {
                Some(mut all) => {
                    all.drain(..from);
                    all
                }
                None => input[from..].to_vec(),
            };
        }
        if pos > size {
            self.skip = pos - size; // a skipped frame goes on in the next reads
        }
        Ok(())
    }
    /// The first failure: reported, then only a Close is looked for.
    fn fail(&mut self, events: Events, kind: u8, code: u16, reason: &str) -> PyResult<()> {
        self.failed = true;
        self.message = None;
        self.utf8 = None;
        if let Some(inflater) = self.inflater.as_mut() {
            inflater.reset();
        }
        events.append((kind, code, reason))
    }

    /// Frames cannot be told apart any more: a failure (if none was reported), and done.
    fn lost(&mut self, events: Events, reason: &str) -> PyResult<Step> {
        if !self.failed {
            self.fail(events, EVENT_FAIL, 1002, reason)?;
        }
        self.done = true;
        self.frame = Vec::new();
        self.message = None;
        self.utf8 = None;
        Ok(Step::Done)
    }

    fn frame_at(
        &mut self,
        py: Python<'_>,
        view: &[u8],
        pos: usize,
        events: Events,
    ) -> PyResult<Step> {
        let failed = self.failed;
        let size = view.len();
        let first = view[pos];
        let opcode = first & 0x0F;
        let fin = first & 0x80 != 0;
        let rsv = first & 0x70;
        // what the first byte alone tells (RFC 6455 §5.2, §5.4, §5.5; RFC 7692 §6)
        if opcode >= 0x8 {
            if opcode > 0xA {
                return self.lost(events, &format!("reserved opcode {opcode:#x}"));
            }
            if !fin {
                return self.lost(events, "fragmented control frame");
            }
            if rsv != 0 && !failed {
                let reason = "reserved bits set on a control frame";
                if opcode == OP_CLOSE {
                    // the peer is closing anyway: nothing more to look for
                    self.fail(events, EVENT_FAIL_IN_CLOSE, 1002, reason)?;
                    self.done = true;
                    self.frame = Vec::new();
                    return Ok(Step::Done);
                }
                self.fail(events, EVENT_FAIL, 1002, reason)?;
                return self.frame_at(py, view, pos, events);
            }
        } else if opcode > 0x2 {
            return self.lost(events, &format!("reserved opcode {opcode:#x}"));
        } else if !failed {
            let problem = if opcode == OP_CONTINUATION {
                if self.message.is_none() {
                    Some("continuation frame without a message")
                } else if rsv != 0 {
                    Some("reserved bits set on a continuation frame")
                } else {
                    None
                }
            } else if self.message.is_some() {
                Some("new message inside a fragmented one")
            } else if rsv != 0 && (rsv != RSV1 || !self.compression) {
                Some("reserved bits set without an extension")
            } else {
                None
            };
            if let Some(reason) = problem {
                self.fail(events, EVENT_FAIL, 1002, reason)?;
                return self.frame_at(py, view, pos, events);
            }
        }
        if pos + 1 >= size {
            return Ok(Step::Unfinished);
        }
        let second = view[pos + 1];
        let masked = second & 0x80 != 0;
        if masked && !self.client_frames {
            return self.lost(events, "masked frame from a server");
        }
        if !masked && self.client_frames {
            return self.lost(events, "unmasked frame from a client");
        }
        let mut length = (second & 0x7F) as u64;
        let mut start = pos + 2;
        if opcode >= 0x8 && length > 125 {
            return self.lost(events, "control frame payload over 125 bytes");
        }
        if length == 126 {
            if size < start + 2 {
                return Ok(Step::Unfinished);
            }
            length = u16::from_be_bytes([view[start], view[start + 1]]) as u64;
            start += 2;
        } else if length == 127 {
            if size < start + 8 {
                return Ok(Step::Unfinished);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&view[start..start + 8]);
            length = u64::from_be_bytes(be);
            if length >> 63 != 0 {
                return self.lost(events, "frame length over 2**63");
            }
            start += 8;
        }
        if opcode < 0x8 && !failed {
            let so_far = if self.message.is_some() {
                self.received
            } else {
                0
            };
            if so_far + length > self.max_message_size as u64 {
                // before a byte of it is kept
                self.fail(events, EVENT_FAIL, 1009, "message too big")?;
                return self.frame_at(py, view, pos, events);
            }
        }
        let mut key = None;
        if masked {
            if size < start + 4 {
                return Ok(Step::Unfinished);
            }
            key = Some([
                view[start],
                view[start + 1],
                view[start + 2],
                view[start + 3],
            ]);
            start += 4;
        }
        let reach = (start - pos) as u64 + length;
        if failed && opcode != OP_CLOSE {
            // skipped, without waiting for (or keeping) its payload
            return Ok(Step::Read(reach.min(usize::MAX as u64) as usize));
        }
        if ((size - start) as u64) < length {
            return Ok(Step::Unfinished);
        }
        let end = start + length as usize;
        let src = &view[start..end];
        if opcode >= 0x8 {
            self.control(py, opcode, src, key, events)?;
        } else {
            self.data(py, opcode, fin, rsv != 0, src, key, events)?;
        }
        Ok(Step::Read(end - pos))
    }

    fn control(
        &mut self,
        py: Python<'_>,
        opcode: u8,
        src: &[u8],
        key: Option<[u8; 4]>,
        events: Events,
    ) -> PyResult<()> {
        let mut payload = [0u8; 125];
        let payload = &mut payload[..src.len()];
        match key {
            Some(k) => masking::mask_into(src, payload, k, 0),
            None => payload.copy_from_slice(src),
        }
        if opcode != OP_CLOSE {
            events.append((opcode, PyBytes::new(py, payload), false))?;
            return Ok(());
        }
        self.done = true;
        self.frame = Vec::new();
        self.message = None;
        self.utf8 = None;
        if payload.is_empty() {
            events.append((OP_CLOSE, 1005u16, ""))?;
            return Ok(());
        }
        if payload.len() == 1 {
            let reason = "close frame with a 1-byte payload";
            return self.fail(events, EVENT_FAIL_IN_CLOSE, 1002, reason);
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        if !close_allowed(code) {
            let reason = format!("close code {code} may not be sent");
            return self.fail(events, EVENT_FAIL_IN_CLOSE, 1002, &reason);
        }
        match std::str::from_utf8(&payload[2..]) {
            Ok(reason) => events.append((OP_CLOSE, code, reason)),
            Err(_) => {
                let reason = "close reason is not UTF-8";
                self.fail(events, EVENT_FAIL_IN_CLOSE, 1007, reason)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        py: Python<'_>,
        opcode: u8,
        fin: bool,
        compressed: bool,
        src: &[u8],
        key: Option<[u8; 4]>,
        events: Events,
    ) -> PyResult<()> {
        if self.message.is_none() {
            self.received = 0;
            if compressed && self.inflater.is_some() {
                self.message = Some(Vec::new());
                self.opcode = opcode;
                self.compressed = true;
                // a fragmented text is checked as each frame inflates (RFC 6455 §8.1: fail
                // as soon as the bytes so far cannot begin valid text); one frame, whole
                self.utf8 = (opcode == OP_TEXT && !fin).then(utf8::Incremental::default);
                return self.inflate(py, fin, src, key, events);
            }
            if fin {
                // the common case: one frame, one message, unmasked straight into its bytes
                let payload = PyBytes::new_with(py, src.len(), |out| {
                    match key {
                        Some(k) => masking::mask_into(src, out, k, 0),
                        None => out.copy_from_slice(src),
                    }
                    Ok(())
                })?;
                if opcode == OP_TEXT && !compressed && !utf8::is_valid(payload.as_bytes()) {
                    return self.fail(events, EVENT_FAIL, 1007, "invalid UTF-8 in a text message");
                }
                return events.append((opcode, payload, compressed));
            }
            self.message = Some(Vec::new());
            self.opcode = opcode;
            self.compressed = compressed;
            self.utf8 = if opcode == OP_TEXT && !compressed {
                Some(utf8::Incremental::default())
            } else {
                None
            };
        }
        if self.compressed && self.inflater.is_some() {
            return self.inflate(py, fin, src, key, events);
        }
        self.received += src.len() as u64;
        let message = self.message.as_mut().expect("a message is being read");
        let at = message.len();
        message.resize(at + src.len(), 0);
        match key {
            Some(k) => masking::mask_into(src, &mut message[at..], k, 0),
            None => message[at..].copy_from_slice(src),
        }
        if let Some(validator) = self.utf8.as_mut() {
            if !validator.feed(&message[at..]) {
                return self.fail(events, EVENT_FAIL, 1007, "invalid UTF-8 in a text message");
            }
        }
        if !fin {
            return Ok(());
        }
        if let Some(validator) = self.utf8.as_ref() {
            if !validator.finish() {
                let reason = "text message ends inside a character";
                return self.fail(events, EVENT_FAIL, 1007, reason);
            }
        }
        let message = self.message.take().expect("a message is being read");
        self.utf8 = None;
        events.append((self.opcode, PyBytes::new(py, &message), self.compressed))
    }

    /// One frame of a compressed message, inflated onto the message so far (RFC 7692 §6);
    /// the message out once its last frame is in. A fragmented text's bytes are checked as
    /// each frame's are inflated, a one-frame text's whole: after the frame is inflated in
    /// full, so that where it fails does not depend on how the inflater steps its output.
    fn inflate(
        &mut self,
        py: Python<'_>,
        fin: bool,
        src: &[u8],
        key: Option<[u8; 4]>,
        events: Events,
    ) -> PyResult<()> {
        self.received += src.len() as u64;
        let unmasked;
        let payload = match key {
            Some(k) => {
                let mut out = vec![0u8; src.len()];
                masking::mask_into(src, &mut out, k, 0);
                unmasked = out;
                &unmasked[..]
            }
            None => src,
        };
        let mut message = self.message.take().expect("a message is being read");
        let before = message.len();
        let limit = self.inflate_limit;
        let inflater = self.inflater.as_mut().expect("the reader inflates");
        let mut result = inflater.feed(payload, &mut message, limit);
        if result.is_ok() && fin {
            result = inflater.end(&mut message, limit);
        }
        match result {
            Err(InflateError::TooBig) => {
                return self.fail(events, EVENT_FAIL, 1009, "message too big");
            }
            Err(InflateError::Corrupt) => {
                return self.fail(events, EVENT_FAIL, 1007, "invalid compressed data");
            }
            Ok(()) => {}
        }
        if let Some(left) = self.inflate_budget {
            let produced = (message.len() - before) as u64;
            if produced > left {
                self.inflate_budget = Some(0);
                return self.fail(
                    events,
                    EVENT_FAIL,
                    CLOSE_POLICY_VIOLATION,
                    OVER_BUDGET_REASON,
                );
            }
            self.inflate_budget = Some(left - produced);
        }
        if let Some(validator) = self.utf8.as_mut() {
            if !validator.feed(&message[before..]) {
                return self.fail(events, EVENT_FAIL, 1007, "invalid UTF-8 in a text message");
            }
        }
        if !fin {
            self.message = Some(message);
            return Ok(());
        }
        match self.utf8.take() {
            Some(validator) if !validator.finish() => {
                let reason = "text message ends inside a character";
                return self.fail(events, EVENT_FAIL, 1007, reason);
            }
            Some(_) => {}
            None if self.opcode == OP_TEXT && !utf8::is_valid(&message) => {
                return self.fail(events, EVENT_FAIL, 1007, "invalid UTF-8 in a text message");
            }
            None => {}
        }
        events.append((self.opcode, PyBytes::new(py, &message), false))
    }
}
