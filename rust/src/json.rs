//! A JSON writer for the plain Python values messages are made of, straight into a buffer.
//!
//! It covers exact dict (str keys), list, tuple, str, int (64-bit), finite float, bool and
//! None. Anything else, or anything unusual (a subclass, a huge int, NaN, deep nesting, a
//! lone surrogate), returns `Unsupported` and the caller hands the whole value to orjson, so
//! behaviour and errors stay orjson's. Output is compact UTF-8, as orjson writes it.

use std::ptr::addr_of_mut;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::Borrowed;

pub struct Unsupported;

const MAX_DEPTH: u32 = 254; // orjson's limit: deeper input is left to it (and its error)

pub fn write_value(
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), Unsupported> {
    // One type-pointer comparison per value: failed casts cost more than the writing.
    // Safety (the unchecked casts below): each follows an exact type match.
    let ty = obj.get_type_ptr();
    let py = obj.py();
    unsafe {
        if obj.is_none() {
            out.extend_from_slice(b"null");
        } else if ty == addr_of_mut!(ffi::PyUnicode_Type) {
            write_str(out, obj.cast_unchecked::<PyString>())?;
        } else if ty == addr_of_mut!(ffi::PyBool_Type) {
            out.extend_from_slice(if obj.is_truthy().map_err(|_| Unsupported)? {
                b"true"
            } else {
                b"false"
            });
        } else if ty == addr_of_mut!(ffi::PyLong_Type) {
            let mut overflow = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow);
            let failed = v == -1 && !ffi::PyErr_Occurred().is_null();
            if overflow == 0 && !failed {
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            } else {
                ffi::PyErr_Clear();
                let v = obj.extract::<u64>().map_err(|_| Unsupported)?;
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
        } else if ty == addr_of_mut!(ffi::PyFloat_Type) {
            let v = ffi::PyFloat_AsDouble(obj.as_ptr());
            if !v.is_finite() {
                return Err(Unsupported);
            }
            out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        } else if depth >= MAX_DEPTH {
            return Err(Unsupported);
        } else if ty == addr_of_mut!(ffi::PyDict_Type) {
            // Borrowed references from the C API: no reference counting per item. Nothing
            // here runs Python code, so the containers cannot change while being read.
            out.push(b'{');
            let (mut pos, mut key, mut value) = (0, std::ptr::null_mut(), std::ptr::null_mut());
            let mut first = true;
            while ffi::PyDict_Next(obj.as_ptr(), &mut pos, &mut key, &mut value) != 0 {
                if !first {
                    out.push(b',');
                }
                first = false;
                let k = Borrowed::from_ptr(py, key);
                if k.get_type_ptr() != addr_of_mut!(ffi::PyUnicode_Type) {
                    return Err(Unsupported);
                }
                write_str(out, &k.cast_unchecked::<PyString>())?;
                out.push(b':');
                write_value(out, &Borrowed::from_ptr(py, value), depth + 1)?;
            }
            out.push(b'}');
        } else if ty == addr_of_mut!(ffi::PyList_Type) || ty == addr_of_mut!(ffi::PyTuple_Type) {
            let list = ty == addr_of_mut!(ffi::PyList_Type);
            let len = if list {
                ffi::PyList_Size(obj.as_ptr())
            } else {
                ffi::PyTuple_Size(obj.as_ptr())
            };
            out.push(b'[');
            for i in 0..len {
                if i > 0 {
                    out.push(b',');
                }
                let item = if list {
                    ffi::PyList_GetItem(obj.as_ptr(), i)
                } else {
                    ffi::PyTuple_GetItem(obj.as_ptr(), i)
                };
                if item.is_null() {
                    ffi::PyErr_Clear();
                    return Err(Unsupported);
                }
                write_value(out, &Borrowed::from_ptr(py, item), depth + 1)?;
            }
            out.push(b']');
        } else {
            return Err(Unsupported);
        }
    }
    Ok(())
}

pub fn write_str(out: &mut Vec<u8>, s: &Bound<'_, PyString>) -> Result<(), Unsupported> {
    let text = s.to_str().map_err(|_| Unsupported)?; // fails only for lone surrogates
    write_escaped(out, text.as_bytes());
    Ok(())
}

/// A JSON string literal: quotes, backslashes and control characters escaped, the rest as is.
pub fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0C => out.extend_from_slice(b"\\f"),
                b if b < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 0xF) as usize]);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}
