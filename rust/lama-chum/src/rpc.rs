//! The RPC layer ("websocket promisifier", chum.md §2): message encoding and classification.
//!
//! Text messages are single JSON objects (§2.1); JS `undefined` travels as the sentinel string
//! `"$__undefined$"` (§2.3), which this module maps to [`None`]/absent in both directions.
//! Binary messages are stream chunks: an f64-LE request id, then payload (§2.6).

use serde_json::{Map, Value};

/// chum.md §2.3: the wire form of JS `undefined`.
pub const UNDEFINED: &str = "$__undefined$";

/// A JSON value or JS `undefined` (`None`).
pub type Data = Option<Value>;

/// An `undefined`-aware value to put on the wire.
pub fn wire(v: &Data) -> Value {
    match v {
        None => Value::String(UNDEFINED.into()),
        Some(v) => v.clone(),
    }
}

/// Decode the sentinel anywhere in `v` (§2.3): object properties equal to it are deleted,
/// array elements become `null` holes (the length is kept); a top-level sentinel is `None`.
pub fn unwire(v: Value) -> Data {
    match v {
        Value::String(s) if s == UNDEFINED => None,
        Value::Array(a) => Some(Value::Array(a.into_iter().map(|x| unwire(x).unwrap_or(Value::Null)).collect())),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                if let Some(x) = unwire(x) {
                    out.insert(k, x);
                }
            }
            Some(Value::Object(out))
        }
        v => Some(v),
    }
}

fn obj(pairs: Vec<(&str, Value)>) -> String {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    // serde_json escapes exactly what JSON.stringify escapes for valid strings
    Value::Object(m).to_string()
}

/// `{"requestId","type":"request","serviceId","args"}` in the reference's key order (§2.1).
pub fn request(id: u64, service: u32, args: &[Data]) -> String {
    obj(vec![
        ("requestId", id.into()),
        ("type", "request".into()),
        ("serviceId", service.into()),
        ("args", Value::Array(args.iter().map(wire).collect())),
    ])
}

/// [`request`] with the args already written as a JSON array: the same text.
pub fn request_text(id: u64, service: u32, args: &str) -> String {
    format!(r#"{{"requestId":{id},"type":"request","serviceId":{service},"args":{args}}}"#)
}

pub fn data_response(id: u64, data: &Data) -> String {
    // written around the borrowed data, the same bytes as `obj` gives: a batch answer (up to
    // 256 objects' microdata) is not copied into a fresh Value first (issue 8)
    let mut out = format!(r#"{{"responseId":{id},"type":"data","data":"#).into_bytes();
    match data {
        None => out.extend_from_slice(br#""$__undefined$""#),
        Some(v) => serde_json::to_writer(&mut out, v).expect("writing JSON into memory cannot fail"),
    }
    out.push(b'}');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

pub fn error_response(id: u64, name: &str, message: &str, code: Option<&str>) -> String {
    let err = obj_value(vec![
        ("name", name.into()),
        ("message", message.into()),
        ("code", code.map_or_else(|| UNDEFINED.into(), Value::from)),
    ]);
    obj(vec![("responseId", id.into()), ("type", "error".into()), ("error", err)])
}

fn obj_value(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

/// §2.4: the reference's answer to an unregistered service id (its spelling kept).
pub fn unknown_service(id: u64, service: &Value) -> String {
    let kind = match service {
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Null => "object",
        _ => "object",
    };
    let shown = match service {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    error_response(id, "TypeError", &format!("Not a function: Servcie ID {shown} [{kind}]"), Some("UNKNOWN-SERVICE"))
}

pub fn stream_chunk(id: u64, chunk: &str, encoding: Option<&str>) -> String {
    obj(vec![
        ("responseId", id.into()),
        ("type", "stream".into()),
        ("chunk", chunk.into()),
        ("encoding", encoding.map_or_else(|| UNDEFINED.into(), Value::from)),
    ])
}

pub fn stream_end(id: u64) -> String {
    obj(vec![("responseId", id.into()), ("type", "stream-end".into())])
}

pub fn stream_error(id: u64) -> String {
    obj(vec![
        ("responseId", id.into()),
        ("type", "stream-error".into()),
        ("error", "Error while reading the file stream".into()),
    ])
}

pub fn write_stream_error(id: u64) -> String {
    obj(vec![("requestId", id.into()), ("type", "write-stream-error".into())])
}

/// §2.6: `[f64-LE id][payload]`.
pub fn binary_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(id as f64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// docs/chum-fastpath.md "batch-binary": a GET_OBJECTS_BINARY answer, `[f64-LE id]` then per
/// requested hash, in order, a u32 LE length and that many bytes of UTF-8 microdata, or
/// `0xFFFFFFFF` for `null`.
pub fn batch_binary_frame(id: u64, texts: &[Option<String>]) -> Vec<u8> {
    let len: usize = texts.iter().map(|t| 4 + t.as_ref().map_or(0, String::len)).sum();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&(id as f64).to_le_bytes());
    for t in texts {
        match t {
            Some(t) => {
                out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out
}

/// The entries of a GET_OBJECTS_BINARY payload (the frame without its id) for `n` hashes;
/// `None` if it is malformed (another count, a length past the end, invalid UTF-8).
pub fn parse_batch_binary(payload: &[u8], n: usize) -> Option<Vec<Option<String>>> {
    batch_binary_ranges(payload, n)?
        .into_iter()
        .map(|r| match r {
            None => Some(None),
            Some(r) => std::str::from_utf8(&payload[r]).ok().map(|t| Some(t.to_string())),
        })
        .collect()
}

/// [`parse_batch_binary`] without copies: where each entry is in `payload` (its byte range),
/// its UTF-8 not checked yet; `None` if the framing is malformed (another count, a length past
/// the end).
pub fn batch_binary_ranges(payload: &[u8], n: usize) -> Option<Vec<Option<std::ops::Range<usize>>>> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    while at < payload.len() {
        let len = u32::from_le_bytes(payload.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len == u32::MAX {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if len > payload.len() - at || out.len() >= n {
            return None;
        }
        out.push(Some(at..at + len));
        at += len;
    }
    (out.len() == n).then_some(out)
}

/// The request id of a binary frame; `None` if shorter than 8 bytes or not a whole number.
pub fn binary_id(frame: &[u8]) -> Option<u64> {
    let b: [u8; 8] = frame.get(..8)?.try_into().ok()?;
    let f = f64::from_le_bytes(b);
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0).then_some(f as u64)
}

/// A classified incoming text message (§2.1).
#[derive(Debug)]
pub enum Incoming {
    Request { id: u64, service: Value, args: Vec<Data> },
    WriteStreamError { id: u64 },
    Data { id: u64, data: Data },
    Error { id: u64, name: String, message: String, code: Option<String> },
    Stream { id: u64, chunk: String, encoding: Option<String> },
    StreamEnd { id: u64 },
    StreamError { id: u64, error: String },
}

fn int_id(v: Option<&Value>) -> Option<u64> {
    let n = v?.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0).then_some(f as u64)
}

/// Classify a text message; `None` for anything §2.1 says to ignore (and count as invalid).
pub fn classify(text: &str) -> Option<Incoming> {
    let v: Value = serde_json::from_str(text).ok()?;
    let Value::Object(mut m) = v else { return None };
    let ty = m.get("type").and_then(Value::as_str)?.to_string();
    match ty.as_str() {
        "request" => {
            let id = int_id(m.get("requestId"))?;
            let service = m.get("serviceId")?.clone();
            int_id(Some(&service))?;
            let args = match m.get("args") {
                Some(Value::Array(a)) => a.iter().cloned().map(unwire).collect(),
                _ => Vec::new(),
            };
            Some(Incoming::Request { id, service, args })
        }
        "write-stream-error" => Some(Incoming::WriteStreamError { id: int_id(m.get("requestId"))? }),
        "data" | "error" | "stream" | "stream-end" | "stream-error" => {
            let id = int_id(m.get("responseId"))?;
            let str_of = |k: &str| match m.get(k) {
                Some(Value::String(s)) if s != UNDEFINED => Some(s.clone()),
                _ => None,
            };
            Some(match ty.as_str() {
                // taken, not copied: a batch answer's data is the bulk of a sync (issue 8)
                "data" => Incoming::Data { id, data: m.remove("data").and_then(unwire) },
                "error" => {
                    let e = m.get("error").cloned().and_then(unwire);
                    let field = |k: &str| e.as_ref().and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_string);
                    Incoming::Error {
                        id,
                        name: field("name").unwrap_or_else(|| "Error".into()),
                        message: field("message").unwrap_or_else(|| match &e {
                            Some(Value::String(s)) => s.clone(),
                            _ => String::new(),
                        }),
                        code: field("code"),
                    }
                }
                "stream" => Incoming::Stream { id, chunk: str_of("chunk").unwrap_or_default(), encoding: str_of("encoding") },
                "stream-end" => Incoming::StreamEnd { id },
                _ => Incoming::StreamError { id, error: str_of("error").unwrap_or_default() },
            })
        }
        _ => None,
    }
}

/// Standard base64 (with or without padding) as the reference's receiver decodes it (§2.6).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut pad = false;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                pad = true;
                continue;
            }
            _ => return None,
        };
        if pad {
            return None;
        }
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_both_ways() {
        assert_eq!(
            request(3, 8, &[Some("ab".into()), None]),
            r#"{"requestId":3,"type":"request","serviceId":8,"args":["ab","$__undefined$"]}"#
        );
        assert_eq!(data_response(1, &None), r#"{"responseId":1,"type":"data","data":"$__undefined$"}"#);
        let p = serde_json::json!({"since": 2, "mark": 5, "roots": [{"type": "x"}], "closure": {"ab": {"root": "<d>"}}});
        assert_eq!(request_text(9, 104, &format!("[{p}]")), request(9, 104, &[Some(p)]));
        let v: Data = Some(serde_json::json!({"b": ["x\"y</div>", 1.5, null], "a": "\u{2028}"}));
        assert_eq!(data_response(7, &v), obj(vec![("responseId", 7.into()), ("type", "data".into()), ("data", wire(&v))]));
        match classify(r#"{"responseId":2,"type":"data","data":{"a":"$__undefined$","b":["$__undefined$",1]}}"#) {
            Some(Incoming::Data { id: 2, data: Some(v) }) => assert_eq!(v.to_string(), r#"{"b":[null,1]}"#),
            o => panic!("{o:?}"),
        }
        assert!(matches!(classify(r#"{"responseId":2,"type":"data","data":"$__undefined$"}"#), Some(Incoming::Data { data: None, .. })));
    }

    #[test]
    fn unknown_service_text() {
        assert_eq!(
            unknown_service(0, &Value::from(1)),
            r#"{"responseId":0,"type":"error","error":{"name":"TypeError","message":"Not a function: Servcie ID 1 [number]","code":"UNKNOWN-SERVICE"}}"#
        );
    }

    #[test]
    fn invalid_messages() {
        for t in ["[1]", "nope", r#"{"type":"request","requestId":"1","serviceId":1}"#, r#"{"type":"data"}"#, r#"{"type":"x","responseId":1}"#] {
            assert!(classify(t).is_none(), "{t}");
        }
    }

    #[test]
    fn batch_binary_round_trip_and_malformed() {
        let texts = vec![Some("<div>ä</div>".to_string()), None, Some(String::new())];
        let f = batch_binary_frame(7, &texts);
        assert_eq!(binary_id(&f), Some(7));
        assert_eq!(parse_batch_binary(&f[8..], 3), Some(texts));
        assert_eq!(parse_batch_binary(&f[8..], 2), None); // another count
        assert_eq!(parse_batch_binary(&f[8..f.len() - 1], 3), None); // cut short
        assert_eq!(parse_batch_binary(&[5, 0, 0, 0, b'a'], 1), None); // past the end
        assert_eq!(parse_batch_binary(&[1, 0, 0, 0, 0xff], 1), None); // not UTF-8
        assert_eq!(parse_batch_binary(&[1, 0], 1), None); // a partial length
        assert_eq!(parse_batch_binary(&[], 0), Some(vec![]));
    }

    #[test]
    fn binary_ids_and_base64() {
        let f = binary_frame(7, b"xy");
        assert_eq!(binary_id(&f), Some(7));
        assert_eq!(binary_id(&f[..5]), None);
        assert_eq!(binary_id(&0.5f64.to_le_bytes()), None);
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a$").is_none());
    }
}
