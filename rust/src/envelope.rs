//! The WSE envelope `[type, payload, stamp]`, packed and unpacked for JSON and MessagePack.
//!
//! Payload serialisation is delegated to orjson and msgpack (both C/Rust fast paths already);
//! what this module adds is one call per message, the frame header written into the same
//! buffer as the body (so a broadcast frame is built once and shared), and strict validation
//! of what arrives.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use std::cell::RefCell;

use crate::frame::{header_len, write_header, OP_BINARY, OP_TEXT};
use crate::json::{write_str, write_value, Unsupported};
use crate::masking::{mask_in_place, random_key};
use crate::EnvelopeError;

static ORJSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ORJSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static MSGPACK_PACKB: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static MSGPACK_UNPACKB: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn cached<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    Ok(cell
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import(module)?.getattr(name)?.unbind())
        })?
        .bind(py))
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Msgpack,
}

impl Format {
    fn opcode(self) -> u8 {
        match self {
            Format::Json => OP_TEXT,
            Format::Msgpack => OP_BINARY,
        }
    }
}

fn check_outgoing(kind: &Bound<'_, PyAny>, stamp: &Bound<'_, PyAny>) -> PyResult<()> {
    if !kind.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("message type must be a str"));
    }
    if !stamp.is_none() && !stamp.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("stamp must be a str or None"));
    }
    Ok(())
}

fn serialise<'py>(
    py: Python<'py>,
    format: Format,
    kind: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyAny>,
    stamp: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    check_outgoing(kind, stamp)?;
    let triple = PyTuple::new(py, [kind, payload, stamp])?;
    let out = match format {
        Format::Json => cached(py, &ORJSON_DUMPS, "orjson", "dumps")?.call1((triple,)),
        Format::Msgpack => cached(py, &MSGPACK_PACKB, "msgpack", "packb")?.call1((triple,)),
    }
    .map_err(|e| PyTypeError::new_err(format!("payload cannot be serialised: {e}")))?;
    Ok(out.cast_into::<PyBytes>()?)
}

/// Room left before the body for the largest header (10 bytes) and a masking key (4).
const HEADROOM: usize = 14;
/// A buffer that grew past this for one large message is not kept.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Writes the JSON envelope after `HEADROOM` bytes of `out`, natively.
fn json_envelope(
    out: &mut Vec<u8>,
    kind: &Bound<'_, PyAny>,
    payload: &Bound<'_, PyAny>,
    stamp: &Bound<'_, PyAny>,
) -> Result<(), Unsupported> {
    out.clear();
    out.resize(HEADROOM, 0);
    out.push(b'[');
    write_str(out, kind.cast::<PyString>().map_err(|_| Unsupported)?)?;
    out.push(b',');
    write_value(out, payload, 1)?;
    out.push(b',');
    if stamp.is_none() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, stamp.cast::<PyString>().map_err(|_| Unsupported)?)?;
    }
    out.push(b']');
    Ok(())
}

/// The JSON envelope as bare bytes or a whole frame, written natively when every value is
/// plain (see json.rs); None when orjson must do it.
fn native_json<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyAny>,
    stamp: &Bound<'py, PyAny>,
    frame: Option<bool>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    check_outgoing(kind, stamp)?;
    SCRATCH.with(|cell| {
        let mut out = cell.borrow_mut();
        if json_envelope(&mut out, kind, payload, stamp).is_err() {
            return Ok(None);
        }
        let body_len = out.len() - HEADROOM;
        let bytes = match frame {
            None => PyBytes::new(py, &out[HEADROOM..]),
            Some(mask) => {
                let key = if mask { Some(random_key()) } else { None };
                let hlen = header_len(body_len, mask);
                let start = HEADROOM - hlen;
                write_header(&mut out[start..HEADROOM], true, 0, OP_TEXT, body_len, key);
                if let Some(k) = key {
                    mask_in_place(&mut out[HEADROOM..], k, 0);
                }
                PyBytes::new(py, &out[start..])
            }
        };
        if out.capacity() > KEEP_CAPACITY {
            *out = Vec::with_capacity(1024);
        }
        Ok(Some(bytes))
    })
}

fn framed<'py>(
    py: Python<'py>,
    format: Format,
    kind: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyAny>,
    stamp: &Bound<'py, PyAny>,
    mask: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let body = serialise(py, format, kind, payload, stamp)?;
    let body = body.as_bytes();
    let key = if mask { Some(random_key()) } else { None };
    let hlen = header_len(body.len(), mask);
    PyBytes::new_with(py, hlen + body.len(), |out| {
        write_header(out, true, 0, format.opcode(), body.len(), key);
        let dst = &mut out[hlen..];
        dst.copy_from_slice(body);
        if let Some(k) = key {
            mask_in_place(dst, k, 0);
        }
        Ok(())
    })
}

fn unpack<'py>(
    py: Python<'py>,
    format: Format,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let decoded = match format {
        Format::Json => cached(py, &ORJSON_LOADS, "orjson", "loads")?
            .call1((data,))
            .map_err(|e| EnvelopeError::new_err(format!("invalid JSON: {}", e.value(py))))?,
        Format::Msgpack => cached(py, &MSGPACK_UNPACKB, "msgpack", "unpackb")?
            .call1((data,))
            .map_err(|e| EnvelopeError::new_err(format!("invalid MessagePack: {}", e.value(py))))?,
    };
    let list = decoded
        .cast::<PyList>()
        .map_err(|_| EnvelopeError::new_err("envelope must be an array"))?;
    let n = list.len();
    if n == 0 || n > 3 {
        return Err(EnvelopeError::new_err(format!(
            "envelope must hold 1 to 3 elements, got {n}"
        )));
    }
    let kind = list.get_item(0)?;
    match kind.cast::<PyString>() {
        Ok(s) if s.to_str()?.is_empty() => {
            return Err(EnvelopeError::new_err("message type must not be empty"))
        }
        Ok(_) => {}
        Err(_) => return Err(EnvelopeError::new_err("message type must be a string")),
    }
    let none = py.None().into_bound(py);
    let payload = if n > 1 {
        list.get_item(1)?
    } else {
        none.clone()
    };
    let stamp = if n > 2 { list.get_item(2)? } else { none };
    if !stamp.is_none() && !stamp.is_instance_of::<PyString>() {
        return Err(EnvelopeError::new_err("stamp must be a string or null"));
    }
    PyTuple::new(py, [kind, payload, stamp])
}

/// `[type, payload, stamp]` as compact UTF-8 JSON.
#[pyfunction]
#[pyo3(signature = (kind, payload=None, stamp=None))]
pub fn pack_json<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    payload: Option<&Bound<'py, PyAny>>,
    stamp: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let none = py.None().into_bound(py);
    let (payload, stamp) = (payload.unwrap_or(&none), stamp.unwrap_or(&none));
    match native_json(py, kind, payload, stamp, None)? {
        Some(bytes) => Ok(bytes),
        None => serialise(py, Format::Json, kind, payload, stamp),
    }
}

/// The JSON envelope as one complete text frame, masked with a fresh key when `mask`.
#[pyfunction]
#[pyo3(signature = (kind, payload=None, stamp=None, mask=false))]
pub fn pack_json_frame<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    payload: Option<&Bound<'py, PyAny>>,
    stamp: Option<&Bound<'py, PyAny>>,
    mask: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let none = py.None().into_bound(py);
    let (payload, stamp) = (payload.unwrap_or(&none), stamp.unwrap_or(&none));
    match native_json(py, kind, payload, stamp, Some(mask))? {
        Some(bytes) => Ok(bytes),
        None => framed(py, Format::Json, kind, payload, stamp, mask),
    }
}

/// `[type, payload, stamp]` as a MessagePack array of three.
#[pyfunction]
#[pyo3(signature = (kind, payload=None, stamp=None))]
pub fn pack_msgpack<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    payload: Option<&Bound<'py, PyAny>>,
    stamp: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let none = py.None().into_bound(py);
    serialise(
        py,
        Format::Msgpack,
        kind,
        payload.unwrap_or(&none),
        stamp.unwrap_or(&none),
    )
}

/// The MessagePack envelope as one complete binary frame.
#[pyfunction]
#[pyo3(signature = (kind, payload=None, stamp=None, mask=false))]
pub fn pack_msgpack_frame<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    payload: Option<&Bound<'py, PyAny>>,
    stamp: Option<&Bound<'py, PyAny>>,
    mask: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let none = py.None().into_bound(py);
    framed(
        py,
        Format::Msgpack,
        kind,
        payload.unwrap_or(&none),
        stamp.unwrap_or(&none),
        mask,
    )
}

/// JSON bytes (or a buffer) to `(type, payload, stamp)`.
#[pyfunction]
pub fn unpack_json<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    unpack(py, Format::Json, data)
}

/// MessagePack bytes (or a buffer) to `(type, payload, stamp)`.
#[pyfunction]
pub fn unpack_msgpack<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    unpack(py, Format::Msgpack, data)
}
