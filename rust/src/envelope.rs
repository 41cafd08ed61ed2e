//! The WSE envelope `[type, payload, stamp]`, packed and unpacked for JSON and MessagePack.
//!
//! Payload serialisation is delegated to orjson and msgpack (both C/Rust fast paths already);
//! what this module adds is one call per message, the frame header written into the same
//! buffer as the body (so a broadcast frame is built once and shared), and strict validation
//! of what arrives.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

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

/// Looks up orjson's and msgpack's functions now, when the extension is imported, instead of
/// at the first message: by then `sys.path` may hold other directories first (`wse-fast serve`
/// puts the application's directory there, as uvicorn does), and an `orjson.py` or
/// `msgpack.py` in one of them would be imported and run in their place.
pub fn resolve_serialisers(py: Python<'_>) -> PyResult<()> {
    cached(py, &ORJSON_DUMPS, "orjson", "dumps")?;
    cached(py, &ORJSON_LOADS, "orjson", "loads")?;
    cached(py, &MSGPACK_PACKB, "msgpack", "packb")?;
    cached(py, &MSGPACK_UNPACKB, "msgpack", "unpackb")?;
    Ok(())
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

/// Answers calls in one step: decodes the envelope, calls the procedure registered under its
/// type, and builds the response frame. Made once per server (`procedures` is its live
/// registry, read on every call) and called once per message received once authenticated.
///
/// What `answer` returns tells what happened, by its length:
/// - `(name, frame)`: a call to a procedure, answered; `frame` is the response to send;
/// - `(type, payload, stamp)`: decoded, nothing called: a message, an answer (its type is
///   `response` or `response_error`), or a call to a name that is not registered;
/// - `(name, payload, stamp, result)`: called; its result is not plain data (an awaitable, or
///   what only the general path encodes or refuses), for the caller to answer;
/// - `(name, payload, stamp, None, exception)`: called; the procedure raised an Exception.
///
/// A message that is not a valid envelope raises `EnvelopeError`, before anything is called.
/// A result is answered here only when its class is exactly one of None, bool, int, float,
/// str, list, tuple or dict, so that anything else keeps the general path's checks.
#[pyclass(module = "wse_fast._codec", frozen)]
pub struct CallAnswerer {
    procedures: Py<PyDict>,
    response: Py<PyString>,
    response_text: String,
    response_error_text: String,
    format: Format,
}

fn plain_result(value: &Bound<'_, PyAny>) -> bool {
    value.is_none()
        || value.is_exact_instance_of::<PyDict>()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyList>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyTuple>()
}

#[pymethods]
impl CallAnswerer {
    #[new]
    #[pyo3(signature = (procedures, response, response_error, binary=false))]
    fn new(
        procedures: Bound<'_, PyDict>,
        response: Bound<'_, PyString>,
        response_error: Bound<'_, PyString>,
        binary: bool,
    ) -> PyResult<Self> {
        Ok(Self {
            response_text: response.to_str()?.to_owned(),
            response_error_text: response_error.to_str()?.to_owned(),
            procedures: procedures.unbind(),
            response: response.unbind(),
            format: if binary {
                Format::Msgpack
            } else {
                Format::Json
            },
        })
    }

    /// What it holds, for Python's cycle collector: procedures often refer to their server,
    /// which holds this answerer.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.procedures)?;
        visit.call(&self.response)
    }

    /// The message `data` (bytes, a buffer, or text for JSON) from `origin`, the connection
    /// handed to the procedure first.
    fn answer<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        origin: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let triple = unpack(py, self.format, data)?;
        let stamp = triple.get_item(2)?;
        if stamp.is_none() {
            return Ok(triple); // a message
        }
        let kind = triple.get_item(0)?;
        let name = kind.cast::<PyString>()?.to_str()?;
        if name == self.response_text || name == self.response_error_text {
            return Ok(triple); // an answer to one of our calls
        }
        let Some(procedure) = self.procedures.bind(py).get_item(&kind)? else {
            return Ok(triple); // not registered: the general path answers that
        };
        let payload = triple.get_item(1)?;
        let result = match procedure.call1((origin, &payload)) {
            Ok(result) => result,
            // Only an Exception is the procedure's failure, to be answered; anything else
            // (KeyboardInterrupt, SystemExit, a cancellation) goes on up, as from a call in
            // Python.
            Err(err) if !err.is_instance_of::<PyException>(py) => return Err(err),
            Err(err) => {
                let exc = err.into_value(py).into_bound(py).into_any();
                return PyTuple::new(py, [kind, payload, stamp, py.None().into_bound(py), exc]);
            }
        };
        if plain_result(&result) {
            let response = self.response.bind(py).as_any();
            let frame = match self.format {
                Format::Json => match native_json(py, response, &result, &stamp, Some(false))? {
                    Some(frame) => Ok(frame),
                    None => framed(py, Format::Json, response, &result, &stamp, false),
                },
                Format::Msgpack => framed(py, Format::Msgpack, response, &result, &stamp, false),
            };
            if let Ok(frame) = frame {
                return PyTuple::new(py, [kind, frame.into_any()]);
            }
        }
        PyTuple::new(py, [kind, payload, stamp, result])
    }
}
