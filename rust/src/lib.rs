//! `wse_fast._codec`: the hot paths of wse-fast. Each module has one job; this file only turns
//! them into Python functions. `python/wse_fast/_pure.py` is the reference for every function.

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[cfg(unix)]
mod direct;
mod envelope;
mod frame;
mod inflate;
mod json;
mod masking;
mod reader;
mod utf8;

create_exception!(
    _codec,
    EnvelopeError,
    PyValueError,
    "A received message is not a valid WSE envelope."
);

/// Buffers at least this large are processed with the GIL released.
const DETACH_AT: usize = 64 * 1024;

fn contiguous(obj: &Bound<'_, PyAny>) -> PyResult<PyBuffer<u8>> {
    let buf = PyBuffer::<u8>::get(obj)?;
    if !buf.is_c_contiguous() {
        return Err(PyBufferError::new_err("buffer must be C-contiguous"));
    }
    Ok(buf)
}

/// The bytes of a buffer. Safety: the caller keeps `buf` alive and unmodified while in use.
unsafe fn view(buf: &PyBuffer<u8>) -> &[u8] {
    if buf.len_bytes() == 0 {
        return &[];
    }
    std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes())
}

/// Runs `f` on the bytes of `obj`: directly for `bytes` (the common case, and no buffer
/// export to pay for on small messages), through the buffer protocol for anything else.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let buf = contiguous(obj)?;
    Ok(f(unsafe { view(&buf) }))
}

fn key4(key: &Bound<'_, PyAny>) -> PyResult<[u8; 4]> {
    with_bytes(key, |b| <[u8; 4]>::try_from(b).ok())?
        .ok_or_else(|| PyValueError::new_err("masking key must be 4 bytes"))
}

/// `data` XOR `key`, starting `offset` bytes into the key, as new bytes.
#[pyfunction]
#[pyo3(signature = (data, key, offset=0))]
fn mask<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    offset: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let key = key4(key)?;
    with_bytes(data, |src| {
        PyBytes::new_with(py, src.len(), |dst| {
            if src.len() >= DETACH_AT {
                py.detach(|| masking::mask_into(src, dst, key, offset));
            } else {
                masking::mask_into(src, dst, key, offset);
            }
            Ok(())
        })
    })?
}

/// True if the whole buffer is valid UTF-8.
#[pyfunction]
fn validate_utf8(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
    with_bytes(data, |bytes| {
        if bytes.len() >= DETACH_AT {
            py.detach(|| utf8::is_valid(bytes))
        } else {
            utf8::is_valid(bytes)
        }
    })
}

/// Validates the fragments of one message as they arrive.
#[pyclass(module = "wse_fast._codec")]
#[derive(Default)]
struct Utf8Validator {
    inner: utf8::Incremental,
}

#[pymethods]
impl Utf8Validator {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// False as soon as the bytes fed so far cannot begin valid UTF-8.
    fn feed(&mut self, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        with_bytes(data, |b| self.inner.feed(b))
    }

    /// True if all input was valid and no sequence was left unfinished.
    fn finish(&self) -> bool {
        self.inner.finish()
    }

    fn reset(&mut self) {
        self.inner.reset()
    }
}

/// A complete frame: header, then `payload` (masked with a fresh CSPRNG key when `mask`).
#[pyfunction]
#[pyo3(signature = (opcode, payload, fin=true, mask=false, rsv=0))]
fn build_frame<'py>(
    py: Python<'py>,
    opcode: u8,
    payload: &Bound<'py, PyAny>,
    fin: bool,
    mask: bool,
    rsv: u8,
) -> PyResult<Bound<'py, PyBytes>> {
    if opcode > 0x0F || rsv > 7 {
        return Err(PyValueError::new_err(
            "opcode must fit 4 bits and rsv 3 bits",
        ));
    }
    let buf = contiguous(payload)?;
    let body = unsafe { view(&buf) };
    let key = if mask {
        Some(masking::random_key())
    } else {
        None
    };
    let hlen = frame::header_len(body.len(), mask);
    PyBytes::new_with(py, hlen + body.len(), |out| {
        frame::write_header(out, fin, rsv, opcode, body.len(), key);
        match key {
            Some(k) => masking::mask_into(body, &mut out[hlen..], k, 0),
            None => out[hlen..].copy_from_slice(body),
        }
        Ok(())
    })
}

type HeaderTuple<'py> = (bool, u8, u8, Option<Bound<'py, PyBytes>>, u64, usize);

/// `(fin, rsv, opcode, mask_key_or_None, payload_len, header_len)`, or None if incomplete.
#[pyfunction]
fn parse_frame_header<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Option<HeaderTuple<'py>>> {
    let buf = contiguous(data)?;
    let bytes = unsafe { view(&buf) };
    match frame::parse_header(bytes) {
        Err(msg) => Err(PyValueError::new_err(msg)),
        Ok(None) => Ok(None),
        Ok(Some(h)) => Ok(Some((
            h.fin,
            h.rsv,
            h.opcode,
            h.mask.map(|k| PyBytes::new(py, &k)),
            h.payload_len,
            h.header_len,
        ))),
    }
}

/// Sends `data` to every socket in `fds` without blocking, with the GIL released. Returns
/// `(index, sent)` for the sockets that did not take all of it (`sent` < 0: minus the errno).
#[cfg(unix)]
#[pyfunction]
fn send_to_all(py: Python<'_>, fds: Vec<i32>, data: &Bound<'_, PyBytes>) -> Vec<(usize, isize)> {
    let bytes = data.as_bytes(); // bytes are immutable: safe to read without the GIL
    py.detach(|| direct::send_to_all(&fds, bytes))
}

/// Sends `frames[i]` to `fds[i]` for each socket, without blocking, with the GIL released.
/// Returns `(index, sent)` as `send_to_all` does.
#[cfg(unix)]
#[pyfunction]
fn send_each(
    py: Python<'_>,
    fds: Vec<i32>,
    frames: Vec<Bound<'_, PyBytes>>,
) -> PyResult<Vec<(usize, isize)>> {
    if frames.len() != fds.len() {
        return Err(PyValueError::new_err("one frame per socket"));
    }
    // bytes are immutable, and `frames` keeps them alive: safe to read without the GIL
    let each: Vec<&[u8]> = frames.iter().map(|frame| frame.as_bytes()).collect();
    Ok(py.detach(|| direct::send_to_all(&fds, direct::Frames::Each(&each))))
}

#[pymodule]
fn _codec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EnvelopeError", m.py().get_type::<EnvelopeError>())?;
    m.add_function(wrap_pyfunction!(mask, m)?)?;
    m.add_function(wrap_pyfunction!(validate_utf8, m)?)?;
    m.add_class::<Utf8Validator>()?;
    m.add_class::<reader::FrameReader>()?;
    m.add_class::<envelope::CallAnswerer>()?;
    m.add_function(wrap_pyfunction!(build_frame, m)?)?;
    #[cfg(unix)]
    m.add_function(wrap_pyfunction!(send_to_all, m)?)?;
    #[cfg(unix)]
    m.add_function(wrap_pyfunction!(send_each, m)?)?;
    m.add_function(wrap_pyfunction!(parse_frame_header, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::pack_json, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::pack_json_frame, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::pack_msgpack, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::pack_msgpack_frame, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::unpack_json, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::unpack_msgpack, m)?)?;
    envelope::resolve_serialisers(m.py())?;
    Ok(())
}
