//! Rough timing of the microdata hot paths (run with optimisations:
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p lama-core --example microdata_bench`).
use lama_core::hash::sha256_hex;
use lama_core::microdata::{self, Value};
use std::time::Instant;

fn main() {
    let msg = Value::Dict(vec![
        (Value::Str("$type$".into()), Value::Str("ChatMessage".into())),
        (Value::Str("text".into()), Value::Str("Hello <world> & \"friends\" 'ok' 😀".into())),
        (
            Value::Str("sender".into()),
            Value::Str("43dbb9896db48b1e31b3bdbf8b806033a67603d6b8e5932a4e1f914338d8223d".into()),
        ),
    ]);
    let n = 200_000;
    let md = microdata::serialize(&msg).unwrap();
    println!("{} bytes: {md}", md.len());
    let t = Instant::now();
    let mut acc = 0usize;
    for _ in 0..n {
        let md = microdata::serialize(&msg).unwrap();
        acc += sha256_hex(md.as_bytes()).len();
    }
    println!("serialize+hash: {:.3} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        acc += microdata::serialize(&msg).unwrap().len();
    }
    println!("serialize:      {:.3} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        acc += sha256_hex(md.as_bytes()).len();
    }
    println!("hash only:      {:.3} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        if let Value::Dict(d) = microdata::parse(&md).unwrap() {
            acc += d.len();
        }
    }
    println!("parse:          {:.3} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    println!("({acc})");
}
