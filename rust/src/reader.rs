//! The peer's side of one WebSocket connection, sans I/O: the bytes of each read in, the
//! messages, control frames, Close and failure they completed out, as a list of
//! `(kind, a, b)` tuples. `FrameReader` in `python/wse_fast/_pure.py` is the reference.
//!
//! Memory: only an unfinished frame's bytes and an unfinished fragmented message's payload
//! are kept, in vectors given back (not just cleared) once they complete, so that an idle
//! connection holds no buffer and a large message leaves nothing behind.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::masking;
use crate::utf8;

const EVENT_FAIL: u8 = 0x00;
const EVENT_FAIL_IN_CLOSE: u8 = 0x18;
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
    /// A whole frame of this many bytes was read.
    Read(usize),
    /// The frame is not all there yet.
    Unfinished,
    /// The reader failed (its failure is in the events).
    Failed,
}

#[pyclass(module = "wse_fast._codec")]
pub struct FrameReader {
    #[pyo3(get, set)]
    max_message_size: usize,
    #[pyo3(get, set)]
    client_frames: bool,
    #[pyo3(get, set)]
    compression: bool,
    /// A Close or a failure has been read: nothing more is.
    #[pyo3(get)]
    done: bool,
    frame: Vec<u8>,
    message: Option<Vec<u8>>,
    opcode: u8,
    compressed: bool,
    utf8: Option<utf8::Incremental>,
}

#[pymethods]
impl FrameReader {
    #[new]
    #[pyo3(signature = (max_message_size, client_frames=true, compression=false))]
    fn new(max_message_size: usize, client_frames: bool, compression: bool) -> Self {
        Self {
            max_message_size,
            client_frames,
            compression,
            done: false,
            frame: Vec::new(),
            message: None,
            opcode: 0,
            compressed: false,
            utf8: None,
        }
    }

    /// Bytes held for an unfinished frame or message.
    #[getter]
    fn buffered(&self) -> usize {
        self.frame.len() + self.message.as_ref().map_or(0, Vec::len)
    }

    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        if self.done {
            return Ok(events);
        }
        let buf = crate::contiguous(data)?;
        let input = unsafe { crate::view(&buf) };
        if input.is_empty() {
            return Ok(events);
        }
        // The bytes to read: what was kept of an unfinished frame and this read, or this
        // read alone (the common case: no copy).
        let kept = std::mem::take(&mut self.frame);
        let joined;
        let bytes: &[u8] = if kept.is_empty() {
            input
        } else {
            let mut all = kept;
            all.extend_from_slice(input);
            joined = all;
            &joined
        };
        let mut pos = 0;
        while pos < bytes.len() && !self.done {
            match self.frame_at(py, bytes, pos, &events)? {
                Step::Read(used) => pos += used,
                Step::Unfinished => {
                    self.frame = bytes[pos..].to_vec();
                    break;
                }
                Step::Failed => break,
            }
        }
        Ok(events)
    }
}

impl FrameReader {
    fn fail(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyList>,
        kind: u8,
        code: u16,
        reason: &str,
    ) -> PyResult<Step> {
        self.done = true;
        self.frame = Vec::new();
        self.message = None;
        self.utf8 = None;
        events.append(PyTuple::new(
            py,
            [
                kind.into_pyobject(py)?.into_any(),
                code.into_pyobject(py)?.into_any(),
                reason.into_pyobject(py)?.into_any(),
            ],
        )?)?;
        Ok(Step::Failed)
    }

    fn frame_at(
        &mut self,
        py: Python<'_>,
        view: &[u8],
        pos: usize,
        events: &Bound<'_, PyList>,
    ) -> PyResult<Step> {
        let size = view.len();
        let first = view[pos];
        let opcode = first & 0x0F;
        let fin = first & 0x80 != 0;
        let rsv = first & 0x70;
        // what the first byte alone tells (RFC 6455 §5.2, §5.4, §5.5; RFC 7692 §6)
        if opcode >= 0x8 {
            if opcode > 0xA {
                let reason = format!("reserved opcode {opcode:#x}");
                return self.fail(py, events, EVENT_FAIL, 1002, &reason);
            }
            if !fin {
                return self.fail(py, events, EVENT_FAIL, 1002, "fragmented control frame");
            }
            if rsv != 0 {
                let kind = if opcode == OP_CLOSE {
                    EVENT_FAIL_IN_CLOSE
                } else {
                    EVENT_FAIL
                };
                return self.fail(
                    py,
                    events,
                    kind,
                    1002,
                    "reserved bits set on a control frame",
                );
            }
        } else if opcode > 0x2 {
            let reason = format!("reserved opcode {opcode:#x}");
            return self.fail(py, events, EVENT_FAIL, 1002, &reason);
        } else if opcode == OP_CONTINUATION {
            if self.message.is_none() {
                let reason = "continuation frame without a message";
                return self.fail(py, events, EVENT_FAIL, 1002, reason);
            }
            if rsv != 0 {
                let reason = "reserved bits set on a continuation frame";
                return self.fail(py, events, EVENT_FAIL, 1002, reason);
            }
        } else {
            if self.message.is_some() {
                let reason = "new message inside a fragmented one";
                return self.fail(py, events, EVENT_FAIL, 1002, reason);
            }
            if rsv != 0 && (rsv != RSV1 || !self.compression) {
                let reason = "reserved bits set without an extension";
                return self.fail(py, events, EVENT_FAIL, 1002, reason);
            }
        }
        if pos + 1 >= size {
            return Ok(Step::Unfinished);
        }
        let second = view[pos + 1];
        let masked = second & 0x80 != 0;
        if masked && !self.client_frames {
            return self.fail(py, events, EVENT_FAIL, 1002, "masked frame from a server");
        }
        if !masked && self.client_frames {
            return self.fail(py, events, EVENT_FAIL, 1002, "unmasked frame from a client");
        }
        let mut length = (second & 0x7F) as u64;
        let mut start = pos + 2;
        if opcode >= 0x8 && length > 125 {
            let reason = "control frame payload over 125 bytes";
            return self.fail(py, events, EVENT_FAIL, 1002, reason);
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
                return self.fail(py, events, EVENT_FAIL, 1002, "frame length over 2**63");
            }
            start += 8;
        }
        if opcode < 0x8 {
            let so_far = self.message.as_ref().map_or(0, Vec::len) as u64;
            if so_far + length > self.max_message_size as u64 {
                // before a byte of it is kept
                return self.fail(py, events, EVENT_FAIL, 1009, "message too big");
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
        Ok(if self.done && opcode < 0x8 {
            Step::Failed
        } else {
            Step::Read(end - pos)
        })
    }

    fn control(
        &mut self,
        py: Python<'_>,
        opcode: u8,
        src: &[u8],
        key: Option<[u8; 4]>,
        events: &Bound<'_, PyList>,
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
            events.append((EVENT_FAIL_IN_CLOSE, 1002u16, reason))?;
            return Ok(());
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        if !close_allowed(code) {
            let reason = format!("close code {code} may not be sent");
            events.append((EVENT_FAIL_IN_CLOSE, 1002u16, reason))?;
            return Ok(());
        }
        match std::str::from_utf8(&payload[2..]) {
            Ok(reason) => events.append((OP_CLOSE, code, reason))?,
            Err(_) => {
                let reason = "close reason is not UTF-8";
                events.append((EVENT_FAIL_IN_CLOSE, 1007u16, reason))?
            }
        }
        Ok(())
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
        events: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        if self.message.is_none() {
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
                    self.fail(
                        py,
                        events,
                        EVENT_FAIL,
                        1007,
                        "invalid UTF-8 in a text message",
                    )?;
                    return Ok(());
                }
                events.append((opcode, payload, compressed))?;
                return Ok(());
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
        let message = self.message.as_mut().expect("a message is being read");
        let at = message.len();
        message.resize(at + src.len(), 0);
        match key {
            Some(k) => masking::mask_into(src, &mut message[at..], k, 0),
            None => message[at..].copy_from_slice(src),
        }
        if let Some(validator) = self.utf8.as_mut() {
            if !validator.feed(&message[at..]) {
                self.fail(
                    py,
                    events,
                    EVENT_FAIL,
                    1007,
                    "invalid UTF-8 in a text message",
                )?;
                return Ok(());
            }
        }
        if !fin {
            return Ok(());
        }
        if let Some(validator) = self.utf8.as_ref() {
            if !validator.finish() {
                let reason = "text message ends inside a character";
                self.fail(py, events, EVENT_FAIL, 1007, reason)?;
                return Ok(());
            }
        }
        let message = self.message.take().expect("a message is being read");
        self.utf8 = None;
        events.append((self.opcode, PyBytes::new(py, &message), self.compressed))?;
        Ok(())
    }
}
