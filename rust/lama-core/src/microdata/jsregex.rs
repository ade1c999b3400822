//! JavaScript RegExp semantics for recipe regexps (objects.md §1.3 "Type checks on write").
//!
//! The reference checks a `string` value with `RegExp.prototype.test`: ECMAScript syntax
//! (Annex B included), `.` not matching line terminators, ASCII `\d \w \b`, and -- without the
//! `u` flag -- matching over UTF-16 *code units* (`^one.leute$` does not match "one😀leute").
//!
//! Matching uses the `regress` crate, an ECMAScript engine. It matches code points, so without
//! `u`/`v` the pattern and the value are mapped onto text with one code point per UTF-16 unit:
//! a surrogate unit `c` becomes `0x10F800 + (c - 0xD800)` (plane-16 code points that cannot
//! occur otherwise, astral characters being split into their units); surrogates in the pattern
//! are rewritten the same way and class ranges overlapping the surrogate block are split. With
//! `u`/`v` pattern and value are used unchanged. This is the algorithm of the pure core
//! (`python/lama/_pure/jsregex.py`), step by step, so both cores answer alike (and regress
//! 0.12 is the engine of both).
//!
//! Backtracking safety: regress backtracks (`^(a+)+$` on "a"*34+"b" would run for hours). The
//! scanner flags patterns that can need exponential backtracking -- a group repeated more than
//! once whose body has a quantifier of variable count or an alternation whose branches are not
//! single, pairwise disjoint characters. Such a recipe registers, but checking a value fails
//! closed with `LAMA-REGEXP-UNSAFE` (docs/core-interface.md).
use crate::{Error, Result};

/// Code of the error raised instead of evaluating a pattern flagged unsafe.
pub const UNSAFE_CODE: &str = "LAMA-REGEXP-UNSAFE";
const MAP_BASE: u32 = 0x10F800;
const INF: i64 = -1;

fn is_sur(u: u16) -> bool {
    (0xD800..=0xDFFF).contains(&u)
}

fn mapped(u: u32) -> char {
    char::from_u32(MAP_BASE + (u - 0xD800)).expect("plane-16 code point")
}

fn hexval(units: &[u16], i: usize, k: usize) -> Option<u32> {
    if i + k > units.len() {
        return None;
    }
    let mut v = 0u32;
    for &u in &units[i..i + k] {
        let d = char::from_u32(u as u32)?.to_digit(16)?;
        v = v * 16 + d;
    }
    Some(v)
}

fn emit_cp(out: &mut String, v: u32) {
    if (0xD800..=0xDFFF).contains(&v) {
        out.push(mapped(v));
    } else {
        out.push_str(&format!("\\u{v:04X}"));
    }
}

fn emit_range(out: &mut String, lo: u32, hi: u32) -> std::result::Result<(), String> {
    if lo > hi {
        return Err("Range out of order in character class".into());
    }
    if hi < 0xD800 || lo > 0xDFFF {
        emit_cp(out, lo);
        out.push('-');
        emit_cp(out, hi);
        return Ok(());
    }
    if lo < 0xD800 {
        emit_cp(out, lo);
        out.push_str("-\\uD7FF");
    }
    out.push(mapped(lo.max(0xD800)));
    out.push('-');
    out.push(mapped(hi.min(0xDFFF)));
    if hi > 0xDFFF {
        out.push_str("\\uE000-");
        emit_cp(out, hi);
    }
    Ok(())
}

fn ch(u: u16) -> Option<char> {
    if is_sur(u) {
        None
    } else {
        char::from_u32(u as u32)
    }
}

/// One ClassAtom (non-u, Annex B) at `units[i]`: (value, class escape, next index).
fn class_atom(units: &[u16], i: usize) -> std::result::Result<(Option<u32>, Option<String>, usize), String> {
    let n = units.len();
    let u = units[i];
    if u != 0x5C {
        return Ok((Some(u as u32), None, i + 1));
    }
    if i + 1 >= n {
        return Err("\\ at end of pattern".into());
    }
    let e = units[i + 1];
    let c = ch(e);
    Ok(match c {
        Some(c @ ('d' | 'D' | 's' | 'S' | 'w' | 'W')) => (None, Some(format!("\\{c}")), i + 2),
        Some('u') => match hexval(units, i + 2, 4) {
            Some(v) => (Some(v), None, i + 6),
            None => (Some(e as u32), None, i + 2),
        },
        Some('x') => match hexval(units, i + 2, 2) {
            Some(v) => (Some(v), None, i + 4),
            None => (Some(e as u32), None, i + 2),
        },
        Some('c') => {
            let ok = i + 2 < n && ch(units[i + 2]).is_some_and(|x| x.is_ascii_alphanumeric() || x == '_');
            if ok {
                (Some(units[i + 2] as u32 % 32), None, i + 3)
            } else {
                (Some(0x5C), None, i + 1)
            }
        }
        Some(d @ '0'..='7') => {
            // LegacyOctalEscapeSequence: up to 3 digits starting with 0-3, else up to 2
            let maxlen = if d <= '3' { 3 } else { 2 };
            let (mut j, mut v) = (i + 1, 0u32);
            while j < n && j - (i + 1) < maxlen {
                match ch(units[j]) {
                    Some(x @ '0'..='7') => {
                        v = v * 8 + x.to_digit(8).unwrap_or(0);
                        j += 1;
                    }
                    _ => break,
                }
            }
            (Some(v), None, j)
        }
        Some('b') => (Some(8), None, i + 2),
        Some('f') => (Some(12), None, i + 2),
        Some('n') => (Some(10), None, i + 2),
        Some('r') => (Some(13), None, i + 2),
        Some('t') => (Some(9), None, i + 2),
        Some('v') => (Some(11), None, i + 2),
        _ => (Some(e as u32), None, i + 2),
    })
}

fn emit_atom(out: &mut String, v: Option<u32>, esc: Option<String>) {
    match esc {
        Some(e) => out.push_str(&e),
        None => emit_cp(out, v.unwrap_or(0)),
    }
}

/// Rewrite the class starting at `units[i] == '['` (non-u mode).
fn rewrite_class(units: &[u16], i: usize, out: &mut String) -> std::result::Result<usize, String> {
    let n = units.len();
    let mut j = i + 1;
    out.push('[');
    if j < n && units[j] == 0x5E {
        out.push('^');
        j += 1;
    }
    loop {
        if j >= n {
            return Err("Unterminated character class".into());
        }
        if units[j] == 0x5D {
            out.push(']');
            return Ok(j + 1);
        }
        let (a, a_esc, next) = class_atom(units, j)?;
        j = next;
        if j + 1 < n && units[j] == 0x2D && units[j + 1] != 0x5D {
            let (b, b_esc, k) = class_atom(units, j + 1)?;
            if a_esc.is_none() && b_esc.is_none() {
                emit_range(out, a.unwrap_or(0), b.unwrap_or(0))?;
            } else {
                // Annex B: [\d-x] is \d, '-', x
                emit_atom(out, a, a_esc);
                out.push_str("\\-");
                emit_atom(out, b, b_esc);
            }
            j = k;
        } else {
            emit_atom(out, a, a_esc);
        }
    }
}

/// Index after the class starting at `units[i] == '['` (u/v mode: no rewriting).
fn skip_class(units: &[u16], i: usize) -> std::result::Result<usize, String> {
    let mut j = i;
    let mut depth = 0;
    while j < units.len() {
        let u = units[j];
        if u == 0x5C {
            j += 2;
            continue;
        }
        if u == 0x5B && depth == 0 {
            depth += 1;
        } else if u == 0x5D {
            depth -= 1;
            if depth == 0 {
                return Ok(j + 1);
            }
        }
        j += 1;
    }
    Err("Unterminated character class".into())
}

/// A token of the safety analysis: `None` for anything but a single-character atom.
type Tok = Option<String>;

#[derive(Default)]
struct Group {
    branches: Vec<Vec<Tok>>,
    inner_var: bool,
    alt_risky: bool,
}

impl Group {
    fn new() -> Self {
        Group { branches: vec![Vec::new()], ..Default::default() }
    }
    fn push(&mut self, t: Tok) {
        self.branches.last_mut().expect("a branch").push(t);
    }
}

/// True if each branch is one single-character atom and no two can match the same text.
fn disjoint(branches: &[Vec<Tok>], icase: bool) -> bool {
    let mut toks = Vec::new();
    for b in branches {
        match b.as_slice() {
            [Some(t)] => toks.push(t.clone()),
            _ => return false,
        }
    }
    if toks.iter().all(|t| t.chars().count() == 1 && t != ".") {
        let keys: Vec<String> = toks.iter().map(|t| if icase { t.to_lowercase() } else { t.clone() }).collect();
        let set: std::collections::HashSet<&String> = keys.iter().collect();
        return set.len() == keys.len();
    }
    if toks.len() != 2 {
        return false;
    }
    let mut pair = [toks[0].as_str(), toks[1].as_str()];
    pair.sort_unstable();
    matches!(pair, ["\\S", "\\s"] | ["\\D", "\\d"] | ["\\W", "\\w"])
}

fn digits(units: &[u16], mut k: usize) -> usize {
    while k < units.len() && (0x30..=0x39).contains(&units[k]) {
        k += 1;
    }
    k
}

fn number(units: &[u16], a: usize, b: usize) -> i64 {
    // saturate: a count this large is as good as unbounded for the analysis
    units[a..b].iter().fold(0i64, |v, &d| v.saturating_mul(10).saturating_add((d - 0x30) as i64))
}

/// (min, max or INF, next index) of a quantifier at `units[i]`.
fn quantifier(units: &[u16], i: usize) -> Option<(i64, i64, usize)> {
    let n = units.len();
    let (lo, hi, mut j) = match units[i] {
        0x2A => (0, INF, i + 1),
        0x2B => (1, INF, i + 1),
        0x3F => (0, 1, i + 1),
        0x7B => {
            let k = digits(units, i + 1);
            if k == i + 1 {
                return None;
            }
            let lo = number(units, i + 1, k);
            if k < n && units[k] == 0x7D {
                (lo, lo, k + 1)
            } else if k < n && units[k] == 0x2C {
                let m = digits(units, k + 1);
                if m >= n || units[m] != 0x7D {
                    return None;
                }
                let hi = if m > k + 1 { number(units, k + 1, m) } else { INF };
                (lo, hi, m + 1)
            } else {
                return None;
            }
        }
        _ => return None,
    };
    if j < n && units[j] == 0x3F {
        j += 1;
    }
    Some((lo, hi, j))
}

fn text(units: &[u16], i: usize, j: usize) -> String {
    String::from_utf16_lossy(&units[i..j])
}

enum Last {
    Nothing,
    Atom,
    Group(bool, bool),
}

/// (pattern for regress, unsafe) -- see the module documentation.
pub(crate) fn scan(pattern: &str, unicode: bool, icase: bool) -> std::result::Result<(String, bool), String> {
    let units: Vec<u16> = pattern.encode_utf16().collect();
    let n = units.len();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut stack = vec![Group::new()];
    let mut last = Last::Nothing;
    let mut unsafe_ = false;
    let mut i = 0;
    while i < n {
        let u = units[i];
        if u == 0x28 {
            stack.push(Group::new());
            out.push('(');
            last = Last::Nothing;
            i += 1;
            continue;
        }
        if u == 0x29 && stack.len() > 1 {
            let mut g = stack.pop().expect("group");
            if g.branches.len() > 1 && !disjoint(&g.branches, icase) {
                g.alt_risky = true;
            }
            let parent = stack.last_mut().expect("parent");
            parent.inner_var |= g.inner_var;
            parent.alt_risky |= g.alt_risky;
            parent.push(None);
            out.push(')');
            last = Last::Group(g.inner_var, g.alt_risky);
            i += 1;
            continue;
        }
        let cur = stack.last_mut().expect("top group");
        if u == 0x5C {
            if i + 1 >= n {
                return Err("\\ at end of pattern".into());
            }
            let e = units[i + 1];
            let c = ch(e);
            let mut j = i + 2;
            let tok: Tok;
            if unicode && matches!(c, Some('u' | 'p' | 'P')) && j < n && units[j] == 0x7B {
                while j < n && units[j] != 0x7D {
                    j += 1;
                }
                j += 1;
                tok = Some(format!("\\{}{{}}", c.unwrap_or('u')));
            } else if c == Some('u') && hexval(&units, i + 2, 4).is_some() {
                let v = hexval(&units, i + 2, 4).unwrap_or(0);
                j = i + 6;
                if (0xD800..=0xDFFF).contains(&v) {
                    tok = Some(mapped(v).to_string());
                    if !unicode {
                        out.push(mapped(v));
                        cur.push(tok);
                        last = Last::Atom;
                        i = j;
                        continue;
                    }
                } else {
                    tok = Some(char::from_u32(v).map(String::from).unwrap_or_default());
                }
            } else if c == Some('x') && hexval(&units, i + 2, 2).is_some() {
                let v = hexval(&units, i + 2, 2).unwrap_or(0);
                j = i + 4;
                tok = Some(char::from_u32(v).map(String::from).unwrap_or_default());
            } else if c == Some('c') && j < n && ch(units[j]).is_some_and(|x| x.is_ascii_alphabetic()) {
                j += 1;
                tok = Some("\\c".into());
            } else if c.is_none() {
                // identity escape of a surrogate (non-u: half of an astral literal)
                if !unicode {
                    out.push(mapped(e as u32));
                    cur.push(Some(mapped(e as u32).to_string()));
                    last = Last::Atom;
                    i = j;
                    continue;
                }
                tok = None;
            } else {
                let c = c.unwrap_or('\\');
                tok = Some(if c.is_alphanumeric() { format!("\\{c}") } else { c.to_string() });
            }
            out.push_str(&text(&units, i, j.min(n)));
            let assertion = matches!(c, Some('b' | 'B'));
            cur.push(if assertion { None } else { tok });
            last = if assertion { Last::Nothing } else { Last::Atom };
            i = j;
            continue;
        }
        if u == 0x5B {
            let j = if unicode {
                let j = skip_class(&units, i)?;
                out.push_str(&text(&units, i, j));
                j
            } else {
                rewrite_class(&units, i, &mut out)?
            };
            cur.push(Some(text(&units, i, j)));
            last = Last::Atom;
            i = j;
            continue;
        }
        if u == 0x7C {
            cur.branches.push(Vec::new());
            out.push('|');
            last = Last::Nothing;
            i += 1;
            continue;
        }
        if let Some((lo, hi, j)) = quantifier(&units, i) {
            if !matches!(last, Last::Nothing) {
                if lo != hi {
                    cur.inner_var = true;
                }
                if let Last::Group(var, alt) = last {
                    if (hi == INF || hi >= 2) && (var || alt) {
                        unsafe_ = true;
                    }
                }
                if let Some(t) = cur.branches.last_mut().and_then(|b| b.last_mut()) {
                    *t = None;
                }
            }
            out.push_str(&text(&units, i, j));
            last = Last::Nothing;
            i = j;
            continue;
        }
        if is_sur(u) && !unicode {
            out.push(mapped(u as u32));
            cur.push(Some(mapped(u as u32).to_string()));
        } else {
            // a surrogate here (u mode) is half of an astral literal: copy the pair
            let j = if is_sur(u) && i + 1 < n && is_sur(units[i + 1]) { i + 2 } else { i + 1 };
            out.push_str(&text(&units, i, j));
            let assertion = u == 0x5E || u == 0x24;
            cur.push(if assertion { None } else { Some(text(&units, i, j)) });
            last = if assertion { Last::Nothing } else { Last::Atom };
            i = j;
            continue;
        }
        last = Last::Atom;
        i += 1;
    }
    Ok((if unicode { pattern.to_owned() } else { out }, unsafe_))
}

/// The value as regress sees it. `value` is in the core's string encoding (text.rs: a lone
/// surrogate unit is carried as a plane-16 character). Without `u` each UTF-16 unit becomes one
/// code point: astral characters are split into their two units and a lone surrogate is a unit
/// like them, as in JavaScript. With `u` a lone surrogate, which regress cannot take, is
/// matched as U+FFFD (what is hashed); the pure core does the same.
fn map_value(s: &str, unicode: bool) -> std::borrow::Cow<'_, str> {
    if s.chars().all(|c| (c as u32) < 0x10000) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for u in super::text::units(s) {
        match u {
            super::text::Unit::Surrogate(x) => out.push(if unicode { '\u{FFFD}' } else { mapped(x as u32) }),
            super::text::Unit::Char(c) if !unicode && (c as u32) >= 0x10000 => {
                let v = c as u32 - 0x10000;
                out.push(mapped(0xD800 + (v >> 10)));
                out.push(mapped(0xDC00 + (v & 0x3FF)));
            }
            super::text::Unit::Char(c) => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The same test as regress for a pattern of the *plain ASCII subset*, on the `regex` crate's
/// automata (no backtracking: linear in the value), or `None` for any other pattern or flags.
///
/// The subset: flags `""`; ASCII literal characters; `\` followed by an ASCII punctuation
/// character of the syntax (`^$\.*+?()[]{}|/-`) as that literal; classes `[...]` (not negated,
/// not empty) of such literals and ranges; groups `(...)` and `(?:...)`; alternation; the
/// quantifiers `* + ? {n} {n,} {n,m}` (also lazy); the assertions `^` and `$`. Nothing in it
/// can match a non-ASCII character, a surrogate or a line terminator differently from
/// JavaScript: there is no `.`, no negated class, no class escape (`\d \s \w \b`...), no
/// case folding, no multiline, no backreference and no lookaround; without `m`, `^`/`$` are
/// the start/end of the value in both. For such a pattern (a regular language) "some match
/// starts somewhere" does not depend on the order backtracking tries the alternatives, so
/// `test` gives the same answer. Anything else (or a pattern the crate refuses, e.g. too
/// large) returns `None` and keeps regress. The recipes' own patterns (`^([0-9a-fA-F]{2})*$` of
/// Signature, the FHIR dates and times...) are in the subset; regress's backtracking over a
/// 128-digit signature was 4.4 % of a CHUM importer's CPU (issue 8).
fn plain_ascii(source: &str, flags: &str) -> Option<regex::Regex> {
    if !flags.is_empty() || !source.is_ascii() {
        return None;
    }
    const SYNTAX: &[u8] = b"^$\\.*+?()[]{}|/-";
    let b = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 8);
    let lit = |out: &mut String, c: u8| out.push_str(&regex::escape(&(c as char).to_string()));
    // one class or escaped atom: the literal byte, and where it ends
    let atom = |i: usize| -> Option<(u8, usize)> {
        match *b.get(i)? {
            b'\\' => b.get(i + 1).filter(|c| SYNTAX.contains(c)).map(|&c| (c, i + 2)),
            c => Some((c, i + 1)),
        }
    };
    let mut depth = 0usize;
    // may a quantifier follow (an atom or a group just ended)?
    let mut quantifiable = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' => {
                if b.get(i + 1) == Some(&b'?') {
                    if b.get(i + 2) != Some(&b':') {
                        return None;
                    }
                    out.push_str("(?:");
                    i += 3;
                } else {
                    out.push('(');
                    i += 1;
                }
                depth += 1;
                quantifiable = false;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                out.push(')');
                i += 1;
                quantifiable = true;
            }
            b'|' => {
                out.push('|');
                i += 1;
                quantifiable = false;
            }
            b'^' | b'$' => {
                out.push(b[i] as char);
                i += 1;
                quantifiable = false;
            }
            b'*' | b'+' | b'?' | b'{' => {
                if !quantifiable {
                    return None;
                }
                if b[i] == b'{' {
                    // {n}, {n,} or {n,m}; anything else is a literal brace in JavaScript
                    // (Annex B): not in the subset
                    let end = i + b[i..].iter().position(|&c| c == b'}')?;
                    let body = &source[i + 1..end];
                    let (lo, hi) = match body.split_once(',') {
                        None => (body, None),
                        Some((lo, hi)) => (lo, Some(hi)),
                    };
                    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|c| c.is_ascii_digit());
                    if !digits(lo) || hi.is_some_and(|h| !h.is_empty() && !digits(h)) {
                        return None;
                    }
                    out.push_str(&source[i..=end]);
                    i = end + 1;
                } else {
                    out.push(b[i] as char);
                    i += 1;
                }
                if b.get(i) == Some(&b'?') {
                    out.push('?');
                    i += 1;
                }
                quantifiable = false;
            }
            b'[' => {
                i += 1;
                if matches!(b.get(i), Some(b'^' | b']')) {
                    return None;
                }
                out.push('[');
                loop {
                    match b.get(i)? {
                        b']' => break,
                        b'[' => return None,
                        _ => {}
                    }
                    let (lo, j) = atom(i)?;
                    i = j;
                    if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|&c| c != b']') {
                        let (hi, j) = atom(i + 1)?;
                        if hi < lo {
                            return None;
                        }
                        i = j;
                        lit(&mut out, lo);
                        out.push('-');
                        lit(&mut out, hi);
                    } else {
                        lit(&mut out, lo);
                    }
                }
                out.push(']');
                i += 1;
                quantifiable = true;
            }
            b']' | b'}' | b'.' => return None,
            _ => {
                let (c, j) = atom(i)?;
                lit(&mut out, c);
                i = j;
                quantifiable = true;
            }
        }
    }
    if depth != 0 {
        return None;
    }
    regex::Regex::new(&out).ok()
}

/// A compiled recipe regexp.
#[derive(Debug, Clone)]
pub(crate) struct JsRegex {
    re: regress::Regex,
    /// [`plain_ascii`]: the same test without backtracking, for the patterns it covers; built
    /// at the first test (a process registers every builtin recipe at start, and compiling
    /// them all cost more than the tests of a sync saved).
    fast: std::sync::OnceLock<Option<regex::Regex>>,
    /// No flags (what [`plain_ascii`] covers).
    plain_flags: bool,
    pub source: String,
    unicode: bool,
    sticky: bool,
    unsafe_: bool,
}

impl JsRegex {
    /// Compile; `Err(message)` if the pattern or flags are not a valid JavaScript RegExp.
    pub(crate) fn new(source: &str, flags: &str) -> std::result::Result<Self, String> {
        let mut seen = String::new();
        for f in flags.chars() {
            if !"dgimsuvy".contains(f) || seen.contains(f) {
                return Err(format!("Invalid flags supplied to RegExp constructor '{flags}'"));
            }
            seen.push(f);
        }
        if seen.contains('u') && seen.contains('v') {
            return Err(format!("Invalid flags supplied to RegExp constructor '{flags}'"));
        }
        let unicode = seen.contains('u') || seen.contains('v');
        let (rewritten, unsafe_) = scan(source, unicode, seen.contains('i'))?;
        let rflags: String = flags.chars().filter(|f| "imsuv".contains(*f)).collect();
        let re = regress::Regex::with_flags(&rewritten, rflags.as_str()).map_err(|e| e.to_string())?;
        Ok(JsRegex { re, fast: std::sync::OnceLock::new(), plain_flags: flags.is_empty(), source: source.to_owned(), unicode, sticky: seen.contains('y'), unsafe_ })
    }

    /// The [`plain_ascii`] form, built once (`None`: regress decides).
    fn fast(&self) -> Option<&regex::Regex> {
        self.fast.get_or_init(|| if self.unsafe_ || !self.plain_flags { None } else { plain_ascii(&self.source, "") }).as_ref()
    }

    /// `RegExp.prototype.test(value)`, or `LAMA-REGEXP-UNSAFE` for a pattern flagged unsafe.
    pub(crate) fn is_match(&self, value: &str) -> Result<bool> {
        if self.unsafe_ {
            return Err(Error::microdata(
                UNSAFE_CODE,
                format!("RegExp /{}/ may need exponential backtracking; lama does not evaluate it", self.source),
            ));
        }
        if let Some(fast) = self.fast() {
            return Ok(fast.is_match(value));
        }
        self.backtracking(value)
    }

    /// The test on regress (see the module documentation).
    fn backtracking(&self, value: &str) -> Result<bool> {
        let text = map_value(value, self.unicode);
        Ok(match self.re.find(&text) {
            None => false,
            Some(m) => !self.sticky || m.start() == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str, f: &str, s: &str) -> bool {
        JsRegex::new(p, f).unwrap().is_match(s).unwrap()
    }

    #[test]
    fn utf16_code_units_without_u() {
        assert!(!t("^one.leute$", "", "one😀leute"));
        assert!(t("^one..leute$", "", "one😀leute"));
        assert!(t("^one.leute$", "u", "one😀leute"));
        assert!(t("😀", "", "😀"));
        assert!(!t("^[😀]$", "", "😀"));
        assert!(t("^[😀]{2}$", "", "😀"));
        assert!(t("^\\uD83D\\uDE00$", "", "😀"));
        assert!(t("^[\\uD800-\\uDBFF][\\uDC00-\\uDFFF]$", "", "😀"));
        assert!(t("^[\\u0000-\\uFFFF]{2}$", "", "😀"));
        assert!(t("^\\u{1F600}$", "u", "😀"));
        assert!(JsRegex::new("[😀-😎]", "").is_err());
    }

    #[test]
    fn ecmascript_syntax_and_classes() {
        for (p, f, s, want) in [
            ("^.$", "", "\n", false),
            ("^.$", "", "\r", false),
            ("^.$", "", "\u{2028}", false),
            ("^.$", "s", "\u{2028}", true),
            ("^\\d$", "", "٣", false),
            ("^\\w$", "", "é", false),
            ("(?=a)a", "", "a", true),
            ("(a)\\1", "", "aa", true),
            ("[^]", "", "\n", true),
            ("\\cJ", "", "\n", true),
            ("\\0", "", "\0", true),
            ("^a{,2}$", "", "a{,2}", true),
            ("^\\p{L}$", "u", "é", true),
            ("a", "y", "ba", false),
        ] {
            assert_eq!(t(p, f, s), want, "/{p}/{f} on {s:?}");
        }
        for (p, f) in [("(", ""), ("a**", ""), ("\\-", "u"), ("a", "gg"), ("a", "uv"), ("a", "x")] {
            assert!(JsRegex::new(p, f).is_err(), "/{p}/{f}");
        }
    }

    /// Every pattern of the builtin recipes, as (source, flags).
    fn recipe_patterns() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python/lama/data/builtin_recipes.json");
        let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(re) = m.get("regexp") {
                        let src = re.get("$regexp").and_then(|s| s.as_str()).unwrap_or_default();
                        out.push((src.to_owned(), re.get("flags").and_then(|s| s.as_str()).unwrap_or_default().to_owned()));
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                serde_json::Value::Array(l) => l.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&all, &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// Values for a pattern: random strings over its own characters and a few others (digits,
    /// separators, non-ASCII, an astral character, a lone surrogate as the core carries it,
    /// line terminators), and the strings that match the patterns of the recipes.
    fn values(source: &str, seed: u64) -> Vec<String> {
        let mut alphabet: Vec<char> = source.chars().filter(|c| !"\\^$()|*+?{}[]".contains(*c)).collect();
        alphabet.extend(['0', '1', '9', 'a', 'f', 'F', 'Z', 'T', '-', ':', '.', '+', ' ', '\n', '\r', 'é', '٣', '😀', '\u{2028}', char::from_u32(MAP_BASE + 5).unwrap()]);
        alphabet.sort();
        alphabet.dedup();
        let mut x = seed | 1;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut out: Vec<String> = ["", "2024", "2024-02-29", "2024-13-01", "23:59:60", "23:59:60.5", "24:00:00", "2024-02-29T12:00:00Z",
            "2024-02-29T12:00:00+14:00", "2024-02-29T12:00:00+14:01", "-0.5e+10", "01", "+12", "-0", "now", "draft", "retired!", "image/png",
            "image/pngx", "ChannelRegistry", "xChannelRegistry", "one.leute", "one-leute", "oneXiom", "full", "lightx", "undefined"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        out.push("0123456789abcdef".repeat(8));
        out.push("0123456789abcdef".repeat(8) + "0");
        out.push("0123456789abcdef".repeat(8) + "\n");
        out.push("0123456789ABCDEF".repeat(4));
        out.push("A".repeat(64));
        out.push("A".repeat(64) + "😀");
        for _ in 0..400 {
            let len = next(24) as usize;
            out.push((0..len).map(|_| alphabet[next(alphabet.len() as u64) as usize]).collect());
        }
        out
    }

    #[test]
    fn plain_ascii_patterns_answer_as_regress() {
        let mut patterns = recipe_patterns();
        let covered_recipes = patterns.iter().filter(|(p, f)| JsRegex::new(p, f).unwrap().fast().is_some()).count();
        // all but the one with class escapes (`\s*(\S|\s)*`) and the two with `.` (`^one.leute$`,
        // `^one.iom$`)
        assert_eq!(covered_recipes, patterns.len() - 3, "{patterns:?}");
        for p in ["a|", "(|a)b", "()", "[--/]x", "[a-]", "[-a]", "[\\]\\-]+", "a{2,}$", "^a{0,3}?b", "(?:ab)+c", "x\\/y", "^$", "",
            "a+?", "[a-c][x-z]{2}", "\\.", "ab|cd|", "^(ab|a)(bc|c)$"] {
            patterns.push((p.to_owned(), String::new()));
        }
        let mut seed = 7;
        for (p, f) in &patterns {
            let re = JsRegex::new(p, f).unwrap();
            if re.fast().is_none() {
                continue;
            }
            seed += 1;
            for v in values(p, seed) {
                assert_eq!(re.is_match(&v).unwrap(), re.backtracking(&v).unwrap(), "/{p}/{f} on {v:?}");
            }
        }
        // outside the subset: regress decides (what differs from the `regex` crate, or could)
        for (p, f) in [("^.$", ""), ("\\d", ""), ("\\w+", ""), ("\\s", ""), ("a\\b", ""), ("[^a]", ""), ("[]", ""), ("a{,2}", ""),
            ("a", "i"), ("^a$", "m"), ("a", "y"), ("a", "u"), ("(?=a)a", ""), ("(a)\\1", ""), ("é", ""), ("\\u0041", ""), ("a{1", ""),
            ("\\cJ", ""), ("[\\d]", ""), ("]", ""), ("a}", ""), ("^(a+)+$", "")] {
            assert!(JsRegex::new(p, f).unwrap().fast().is_none(), "/{p}/{f}");
        }
    }

    #[test]
    fn exponential_patterns_fail_closed() {
        for p in ["^(a+)+$", "(a|aa)*$", "([a-z]|_)*", "((a+))*"] {
            let e = JsRegex::new(p, "").unwrap().is_match(&("a".repeat(34) + "b")).unwrap_err();
            assert_eq!(e.code, UNSAFE_CODE);
        }
        for p in ["^([0-9a-fA-F]{2})*$", "\\s*(\\S|\\s)*", "(\\.[0-9]+)?"] {
            assert!(JsRegex::new(p, "").unwrap().is_match("ab").is_ok(), "{p}");
        }
    }
}
