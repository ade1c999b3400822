//! Golden vectors of the reference implementation (tests/vectors/): microdata.json,
//! microdata-storage-dump.json, microdata-negative-and-errors.json (objects.md §1, §2).
use lama_core::hash::sha256_hex;
use lama_core::microdata::{self, Value};
use serde_json::Value as J;
use std::sync::Once;

fn vectors(name: &str) -> J {
    let path = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Register the Harness* test recipes of recipes.json (not built in).
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for entry in vectors("recipes.json").as_array().unwrap() {
            let r = &entry["recipe"];
            if r["name"].as_str().unwrap().starts_with("Harness") {
                microdata::register_recipe_json(&r.to_string()).unwrap();
            }
        }
    });
}

fn number(lit: &str) -> Value {
    if lit.contains(['.', 'e', 'E']) {
        Value::Float(lit.parse().unwrap())
    } else {
        lit.parse::<i64>().map(Value::Int).unwrap_or_else(|_| Value::Float(lit.parse().unwrap()))
    }
}

/// Vector JSON -> Value. `{"$set": [...]}` is a Set, `{"$map": [[k, v], ...]}` a Dict (inside a
/// stringifiable value a JS Map, i.e. a set of [k, v] pairs), `{"$number": "-0"}` is -0.0,
/// `{"$regexp": src}` (only inside stringifiable recipe rules) the JSON* of a RegExp: its source.
fn conv(v: &J, in_json: bool) -> Value {
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => number(&n.to_string()),
        J::String(s) => Value::Str(s.clone()),
        J::Array(a) => Value::List(a.iter().map(|x| conv(x, in_json)).collect()),
        J::Object(o) => {
            if let Some(J::Array(items)) = o.get("$set") {
                return Value::Set(items.iter().map(|x| conv(x, in_json)).collect());
            }
            if let Some(J::Array(pairs)) = o.get("$map") {
                if in_json {
                    return Value::Set(pairs.iter().map(|p| conv(p, true)).collect());
                }
                return Value::Dict(
                    pairs.iter().map(|p| (conv(&p[0], in_json), conv(&p[1], in_json))).collect(),
                );
            }
            if let Some(J::String(n)) = o.get("$number") {
                return Value::Float(n.parse().unwrap());
            }
            if let Some(J::String(src)) = o.get("$regexp") {
                return Value::Str(src.clone());
            }
            Value::Dict(o.iter().map(|(k, x)| (Value::Str(k.clone()), conv(x, in_json))).collect())
        }
    }
}

/// Top-level itemprops of a type whose rule is `stringifiable`.
fn json_props(type_name: &str) -> Vec<String> {
    let recipe: J = serde_json::from_str(&microdata::recipe_json(type_name).unwrap()).unwrap();
    recipe["rule"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["itemtype"]["type"] == "stringifiable")
        .map(|r| r["itemprop"].as_str().unwrap().to_owned())
        .collect()
}

fn conv_object(v: &J) -> Value {
    let o = v.as_object().unwrap();
    let t = o["$type$"].as_str().unwrap();
    let json_props = if microdata::recipe_names().iter().any(|n| n == t) { json_props(t) } else { vec![] };
    Value::Dict(
        o.iter()
            .map(|(k, x)| {
                let in_json = json_props.contains(k);
                let val = if t == "Recipe" && k == "rule" { conv_rules(x) } else { conv(x, in_json) };
                (Value::Str(k.clone()), val)
            })
            .collect(),
    )
}

/// Recipe.rule: nested rule objects whose `itemtype`/`inheritFrom` are stringifiable.
fn conv_rules(v: &J) -> Value {
    Value::List(
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                Value::Dict(
                    r.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, x)| (Value::Str(k.clone()), conv(x, k == "itemtype" || k == "inheritFrom")))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Semantic equality: sets compare as multisets, -0 == 0, NaN == NaN.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Set(x), Value::Set(y)) => {
            x.len() == y.len() && {
                let mut used = vec![false; y.len()];
                x.iter().all(|xi| {
                    if let Some(j) = (0..y.len()).find(|&j| !used[j] && same(xi, &y[j])) {
                        used[j] = true;
                        true
                    } else {
                        false
                    }
                })
            }
        }
        (Value::List(x), Value::List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => *x as f64 == *y,
        _ => a == b,
    }
}

/// `inspect` (the check without building a value) accepts and refuses exactly what `parse`
/// does, with the same error as `references` (whose messages name the property path), and
/// finds the references `references` finds, as 32 bytes.
fn inspect_agrees(md: &str) {
    assert_eq!(microdata::parse(md).is_ok(), microdata::references(md).is_ok());
    // reference_hashes (the store's closure walks): the same check, the same references
    match (microdata::references(md), microdata::reference_hashes(md)) {
        (Ok(refs), Ok(found)) => {
            let want: Vec<(&str, String)> = refs.into_iter().map(|r| (r.kind.as_str(), r.hash)).collect();
            let got: Vec<(&str, String)> = found.into_iter().map(|(k, h)| (k.as_str(), lama_core::hash::hash_hex(&h))).collect();
            assert_eq!(got, want, "{md}");
        }
        (Err(a), Err(b)) => assert_eq!((a.code.clone(), a.to_string()), (b.code.clone(), b.to_string()), "{md}"),
        (a, b) => panic!("references {:?} but reference_hashes {:?}: {md}", a.err(), b.err()),
    }
    match (microdata::references(md), microdata::inspect(md)) {
        (Ok(refs), Ok(found)) => {
            let want: Vec<(String, &str, String)> =
                refs.into_iter().map(|r| (r.path, r.kind.as_str(), r.hash)).collect();
            let got: Vec<(String, &str, String)> =
                found.refs.into_iter().map(|r| (r.path, r.kind.as_str(), lama_core::hash::hash_hex(&r.hash))).collect();
            assert_eq!(got, want, "{md}");
            let (t, is_id) = microdata::type_of(md).unwrap();
            assert_eq!((found.type_name, found.is_id), (t, is_id));
            let want_id = if is_id { None } else { microdata::id_microdata_of(md).unwrap() };
            assert_eq!(found.id_microdata, want_id, "{md}");
        }
        (Err(a), Err(b)) => assert_eq!((a.code.clone(), a.to_string()), (b.code.clone(), b.to_string()), "{md}"),
        (a, b) => panic!("parse {:?} but inspect {:?}: {md}", a.err(), b.err()),
    }
}

#[test]
fn microdata_json_vectors() {
    setup();
    let all = vectors("microdata.json");
    let mut n = 0;
    for e in all.as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let obj = conv_object(&e["object"]);
        let md = e["microdata"].as_str().unwrap();
        let got = microdata::serialize(&obj).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(got, md, "{name}: microdata");
        assert_eq!(sha256_hex(got.as_bytes()), e["hash"].as_str().unwrap(), "{name}: hash");

        let (both, id) = microdata::serialize_with_id(&obj).unwrap();
        assert_eq!(both, md, "{name}: serialize_with_id");
        match e.get("idMicrodata").and_then(J::as_str) {
            Some(idmd) => {
                assert_eq!(id.as_deref(), Some(idmd), "{name}: ID microdata (one pass)");
                assert_eq!(microdata::id_microdata(&obj).unwrap(), idmd, "{name}: ID microdata");
                assert_eq!(sha256_hex(idmd.as_bytes()), e["idHash"].as_str().unwrap(), "{name}: idHash");
                assert_eq!(microdata::id_microdata_of(md).unwrap().as_deref(), Some(idmd), "{name}: id_microdata_of");
                assert!(microdata::is_versioned(e["recipe"].as_str().unwrap()).unwrap());
                // the ID object parses back to its ID properties and re-serializes identically
                let idobj = microdata::parse(idmd).unwrap_or_else(|err| panic!("{name}: parse ID: {err}"));
                assert_eq!(microdata::id_microdata(&idobj).unwrap(), idmd, "{name}: ID round trip");
                assert_eq!(microdata::type_of(idmd).unwrap(), (e["recipe"].as_str().unwrap().to_owned(), true));
            }
            None => {
                assert_eq!(id, None, "{name}: unversioned has no ID");
                let err = microdata::id_microdata(&obj).unwrap_err();
                assert_eq!(err.code, "O2M-COBJ1", "{name}");
                assert_eq!(microdata::id_microdata_of(md).unwrap(), None);
            }
        }
        assert_eq!(microdata::type_of(md).unwrap(), (e["recipe"].as_str().unwrap().to_owned(), false));

        inspect_agrees(md);
        if let Some(idmd) = e.get("idMicrodata").and_then(J::as_str) {
            inspect_agrees(idmd);
        }
        match e.get("parseError") {
            Some(_) => {
                let err = microdata::parse(md).unwrap_err();
                assert_eq!(err.kind, lama_core::ErrorKind::Microdata, "{name}: {err}");
            }
            None => {
                let parsed = microdata::parse(md).unwrap_or_else(|err| panic!("{name}: parse: {err}"));
                let expect = conv(&e["parsedBack"], false);
                assert!(same(&parsed, &expect), "{name}: parsedBack\n got {parsed:?}\nwant {expect:?}");
                if e["reserializeEqual"] == true {
                    assert_eq!(microdata::serialize(&parsed).unwrap(), md, "{name}: re-serialize");
                }
            }
        }
        n += 1;
    }
    assert_eq!(n, 77);
}

#[test]
fn storage_dump_vectors() {
    setup();
    let dump = vectors("microdata-storage-dump.json");
    let mut n = 0;
    for e in dump["entries"].as_array().unwrap() {
        let file = e["file"].as_str().unwrap();
        let md = e["microdata"].as_str().unwrap();
        assert_eq!(sha256_hex(md.as_bytes()), file);
        inspect_agrees(md);
        if e.get("parseError").is_some() {
            assert!(microdata::parse(md).is_err(), "{file} should not parse");
            continue;
        }
        let parsed = microdata::parse(md).unwrap_or_else(|err| panic!("{file}: {err}"));
        let is_id = e["isIdObject"] == true;
        assert_eq!(microdata::type_of(md).unwrap(), (e["recipe"].as_str().unwrap().to_owned(), is_id));
        if is_id {
            assert_eq!(microdata::id_microdata(&parsed).unwrap(), md, "{file}: ID re-serialize");
        } else {
            let (again, id) = microdata::serialize_with_id(&parsed).unwrap();
            assert_eq!(again, md, "{file}: re-serialize");
            if let Some(idmd) = e.get("idMicrodata").and_then(J::as_str) {
                assert_eq!(id.as_deref(), Some(idmd), "{file}: ID");
                assert_eq!(microdata::id_microdata_of(md).unwrap().as_deref(), Some(idmd));
                assert_eq!(sha256_hex(idmd.as_bytes()), e["idHash"].as_str().unwrap());
            }
            if let Some(o) = e.get("object") {
                assert_eq!(microdata::serialize(&conv_object(o)).unwrap(), md, "{file}: from object");
            }
        }
        n += 1;
    }
    assert!(n > 300);
}

#[test]
fn negative_vectors() {
    setup();
    for e in vectors("microdata-negative-and-errors.json").as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let obj = conv_object(&e["object"]);
        let err = microdata::serialize(&obj).expect_err(name);
        let want = e["error"].as_str().unwrap();
        let code = want.split(':').next().unwrap();
        assert_eq!(err.code, code, "{name}: {err}");
        assert_eq!(err.to_string(), want, "{name}");
    }
}

#[test]
fn references_paths() {
    setup();
    let h = |c: char| c.to_string().repeat(64);
    let md = format!(
        "<div itemscope itemtype=\"//refin.io/HarnessVersioned\"><span itemprop=\"key\">k</span><span itemprop=\"n\">1</span><span itemprop=\"data\"></span><ul itemprop=\"refs\"><li><a data-type=\"id\">{}</a></li><li><a data-type=\"id\">{}</a></li></ul></div>",
        h('a'),
        h('b')
    );
    let refs = microdata::references(&md).unwrap();
    let got: Vec<(String, &str, String)> = refs.iter().map(|r| (r.path.clone(), r.kind.as_str(), r.hash.clone())).collect();
    assert_eq!(got, vec![("refs.0".into(), "id", h('a')), ("refs.1".into(), "id", h('b'))]);

    let obj = Value::Dict(vec![
        (Value::Str("$type$".into()), Value::Str("Instance".into())),
        (Value::Str("name".into()), Value::Str("i".into())),
        (Value::Str("owner".into()), Value::Str(h('c'))),
        (Value::Str("recipe".into()), Value::Set(vec![Value::Str(h('d'))])),
        (
            Value::Str("enabledReverseMapTypes".into()),
            Value::Dict(vec![(Value::Str("Person".into()), Value::Set(vec![Value::Str("*".into())]))]),
        ),
        (Value::Str("enabledReverseMapTypesForIdObjects".into()), Value::Dict(vec![])),
    ]);
    let md = microdata::serialize(&obj).unwrap();
    let refs = microdata::references(&md).unwrap();
    let got: Vec<(String, &str)> = refs.iter().map(|r| (r.path.clone(), r.kind.as_str())).collect();
    assert_eq!(got, vec![("owner".into(), "id"), ("recipe.0".into(), "obj")]);
    // references of an ID object: only its ID properties
    let id = microdata::id_microdata(&obj).unwrap();
    assert_eq!(microdata::references(&id).unwrap().len(), 1);

    // map keys/values and nested objects
    microdata::register_recipe_json(
        r#"{"$type$":"Recipe","name":"RefPaths","rule":[
            {"itemprop":"mapset","itemtype":{"type":"map","key":{"type":"referenceToId"},"value":{"type":"set","item":{"type":"referenceToObj"}}}},
            {"itemprop":"nest","itemtype":{"type":"object","rules":[{"itemprop":"c","itemtype":{"type":"array","item":{"type":"object","rules":[{"itemprop":"x","itemtype":{"type":"referenceToClob"}}]}}}]}},
            {"itemprop":"b","itemtype":{"type":"referenceToBlob"}}]}"#,
    )
    .unwrap();
    let d = |v: Vec<(&str, Value)>| Value::Dict(v.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect());
    let obj = d(vec![
        ("$type$", Value::Str("RefPaths".into())),
        ("mapset", Value::Dict(vec![(Value::Str(h('1')), Value::Set(vec![Value::Str(h('3')), Value::Str(h('2'))]))])),
        ("nest", d(vec![("c", Value::List(vec![d(vec![("x", Value::Str(h('4')))])]))])),
        ("b", Value::Str(h('5'))),
    ]);
    inspect_agrees(&microdata::serialize(&obj).unwrap());
    let refs = microdata::references(&microdata::serialize(&obj).unwrap()).unwrap();
    let got: Vec<(String, &str, String)> = refs.iter().map(|r| (r.path.clone(), r.kind.as_str(), r.hash.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("mapset.0.key".into(), "id", h('1')),
            ("mapset.0.value.0".into(), "obj", h('2')),
            ("mapset.0.value.1".into(), "obj", h('3')),
            ("nest.c.0.x".into(), "clob", h('4')),
            ("b".into(), "blob", h('5')),
        ]
    );
}

#[test]
fn recipe_registry() {
    setup();
    let names = microdata::recipe_names();
    assert_eq!(&names[..3], &["Access", "IdAccess", "Chum"]);
    assert!(names.iter().any(|n| n == "HarnessAllTypes"));
    // identical re-registration is a no-op, a different recipe of the same name is OR-ADDR1
    let json = microdata::recipe_json("Person").unwrap();
    microdata::register_recipe_json(&json).unwrap();
    let mut other: J = serde_json::from_str(&json).unwrap();
    other["rule"][1]["optional"] = J::Bool(false);
    assert_eq!(microdata::register_recipe_json(&other.to_string()).unwrap_err().code, "OR-ADDR1");
    assert_eq!(microdata::recipe_json("Nope").unwrap_err().code, "OR-GR1");
    assert_eq!(microdata::is_versioned("Nope").unwrap_err().code, "OR-GR1");
    assert!(!microdata::is_versioned("Keys").unwrap());
    // invalid recipes
    for bad in [
        r#"{"$type$":"Recipe","name":"Bad1","rule":[{"itemprop":"a.b"}]}"#,
        r#"{"$type$":"Recipe","name":"Bad2","rule":[{"itemprop":"a"},{"itemprop":"a"}]}"#,
        r#"{"$type$":"Recipe","name":"Bad3","rule":[{"itemprop":"a","itemtype":{"type":"object","rules":[{"itemprop":"x","isId":true}]}}]}"#,
        r#"{"$type$":"Recipe","name":"Bad4","rule":[{"itemprop":"a","itemtype":{"type":"map","key":{"type":"array","item":{"type":"string"}},"value":{"type":"string"}}}]}"#,
        r#"{"$type$":"Recipe","name":"Bad5","rule":[{"itemprop":"a","itemtype":{"type":"nope"}}]}"#,
        r#"{"$type$":"Recipe","name":"Bad6","rule":[{"itemprop":"a","inheritFrom":"Bad6.nope"}]}"#,
        r#"{"$type$":"Recipe","name":"Bad7","rule":[{"itemprop":"a","itemtype":{"type":"string","regexp":{"$regexp":"(","flags":""}}}]}"#,
        r#"{"$type$":"Recipe","name":"Bad8","rule":"x"}"#,
        r#"{"$type$":"Recipe","name":"Bad9","rule":[{"itemprop":"$type$"}]}"#,
        r#"not json"#,
    ] {
        let e = microdata::register_recipe_json(bad).unwrap_err();
        assert_eq!(e.kind, lama_core::ErrorKind::Recipe, "{bad}: {e}");
        assert!(!microdata::recipe_names().iter().any(|n| n.starts_with("Bad")));
    }
    // inheritance with extract, and from another recipe
    microdata::register_recipe_json(
        r#"{"$type$":"Recipe","name":"InhTest","rule":[
            {"itemprop":"m","itemtype":{"type":"map","key":{"type":"string"},"value":{"type":"integer"}}},
            {"itemprop":"l","itemtype":{"type":"bag","item":{"type":"referenceToObj"}}},
            {"itemprop":"e","inheritFrom":{"rule":"InhTest.m","extract":"MapItemType"},"optional":true},
            {"itemprop":"i","inheritFrom":{"rule":"InhTest.l","extract":"CollectionItemType"},"optional":true},
            {"itemprop":"p","inheritFrom":"Person.email","optional":true}]}"#,
    )
    .unwrap();
    let h = "a".repeat(64);
    let obj = Value::Dict(vec![
        (Value::Str("$type$".into()), Value::Str("InhTest".into())),
        (Value::Str("m".into()), Value::Dict(vec![])),
        (Value::Str("l".into()), Value::List(vec![])),
        // objects.md §1.9 "Correction": MapItemType is never applied, `e` stays a map
        (Value::Str("e".into()), Value::Dict(vec![(Value::Str("k".into()), Value::Int(3))])),
        (Value::Str("i".into()), Value::Str(h.clone())),
        (Value::Str("p".into()), Value::Str("x@y".into())),
    ]);
    let md = microdata::serialize(&obj).unwrap();
    assert_eq!(
        md,
        format!("<div itemscope itemtype=\"//refin.io/InhTest\"><dl itemprop=\"m\"></dl><ul itemprop=\"l\"></ul><dl itemprop=\"e\"><dt>k</dt><dd>3</dd></dl><a itemprop=\"i\" data-type=\"obj\">{h}</a><span itemprop=\"p\">x@y</span></div>")
    );
    assert!(!microdata::is_versioned("InhTest").unwrap(), "isId is not inherited");
    assert_eq!(microdata::parse(&md).unwrap(), obj);
}

#[test]
fn parse_errors() {
    setup();
    let person = "<div itemscope itemtype=\"//refin.io/Person\"><span itemprop=\"email\">a</span></div>";
    assert!(microdata::parse(person).is_ok());
    let code = |t: &str| {
        inspect_agrees(t);
        microdata::parse(t).unwrap_err().code
    };
    assert_eq!(code("hello"), "M2O-PH1");
    assert_eq!(code(&format!("{person}\n")), "M2O-PCONV2");
    assert_eq!(code("<div itemscope itemtype=\"//refin.io/Person\"></div>"), "M2O-PD1");
    assert_eq!(code("<div itemscope itemtype=\"//refin.io/Nope\"></div>"), "OR-ET1");
    assert_eq!(
        code("<div itemscope itemtype=\"//refin.io/Keys\"><a itemprop=\"owner\" data-type=\"id\">xyz</a></div>"),
        "M2O-PV1"
    );
    assert_eq!(
        code("<div itemscope itemtype=\"//refin.io/Person\"><span itemprop=\"email\">a</span><span itemprop=\"nick\">b</span></div>"),
        "M2O-PCONV1"
    );
    assert_eq!(microdata::type_of("<p>").unwrap_err().code, "M2O-PH1");
    // empty primitive text -> "" for every primitive type; numbers typed like Python
    let bt = |t: &str| microdata::parse(&format!("<div itemscope itemtype=\"//refin.io/BodyTemperature\"><span itemprop=\"temperature\">{t}</span></div>")).unwrap();
    assert_eq!(bt("").get("temperature"), Some(&Value::Str(String::new())));
    assert!(matches!(bt("null").get("temperature"), Some(Value::Float(f)) if f.is_nan()));
    assert_eq!(bt("9007199254740993").get("temperature"), Some(&Value::Int(9007199254740992)));
    assert_eq!(bt("9007199254740995").get("temperature"), Some(&Value::Float(9007199254740996.0)));
    assert_eq!(bt("-0").get("temperature"), Some(&Value::Int(0)));
    assert_eq!(bt("2.5").get("temperature"), Some(&Value::Float(2.5)));
}

#[test]
fn serialize_rules() {
    setup();
    let p = |v: Vec<(&str, Value)>| Value::Dict(v.into_iter().map(|(k, v)| (Value::Str(k.into()), v)).collect());
    // None at top level = absent; bool is not a number; a float with integral value is an integer
    let obj = p(vec![("$type$", Value::Str("Person".into())), ("email", Value::Str("e".into())), ("name", Value::Null)]);
    assert_eq!(microdata::serialize(&obj).unwrap(), "<div itemscope itemtype=\"//refin.io/Person\"><span itemprop=\"email\">e</span></div>");
    let bt = |v: Value| p(vec![("$type$", Value::Str("BodyTemperature".into())), ("temperature", v)]);
    assert_eq!(microdata::serialize(&bt(Value::Bool(true))).unwrap_err().code, "O2M-RTYC1");
    assert!(microdata::serialize(&bt(Value::Float(f64::NAN))).unwrap().contains(">null<"));
    assert!(microdata::serialize(&bt(Value::Int(1 << 60))).unwrap().contains(">1152921504606847000<"));
    assert_eq!(microdata::serialize(&Value::List(vec![])).unwrap_err().code, "O2M-CONV");
    assert_eq!(microdata::serialize(&p(vec![("x", Value::Int(1))])).unwrap_err().code, "O2M-CONV");
    // Person example of objects.md §1.4
    let obj = p(vec![("$type$", Value::Str("Person".into())), ("email", Value::Str("a<b>&c\"'ü😀\n\t".into()))]);
    let md = microdata::serialize(&obj).unwrap();
    assert_eq!(sha256_hex(md.as_bytes()), "61d3b6e11ff7dedf1af181dc01f0c2a66b4ea306856b2c5d53fd9dcba41a45cb");
    // integer: integral float accepted, fraction rejected
    let cr = |v: Value| p(vec![("$type$", Value::Str("HarnessVersioned".into())), ("key", Value::Str("k".into())), ("n", v), ("data", Value::Str("d".into()))]);
    assert!(microdata::serialize(&cr(Value::Float(5.0))).unwrap().contains("<span itemprop=\"n\">5</span>"));
    assert_eq!(microdata::serialize(&cr(Value::Float(5.5))).unwrap_err().code, "O2M-RTYC1");
}

#[test]
fn recursive_recipe_and_depth_limit() {
    setup();
    microdata::register_recipe_json(
        r#"{"$type$":"Recipe","name":"Tree","rule":[
            {"itemprop":"node","itemtype":{"type":"array","item":{"type":"object","rules":[
                {"itemprop":"v"},{"itemprop":"node","inheritFrom":"Tree.node","optional":true}]}}}]}"#,
    )
    .unwrap();
    let leaf = |v: &str| Value::Dict(vec![(Value::Str("v".into()), Value::Str(v.into()))]);
    let obj = Value::Dict(vec![
        (Value::Str("$type$".into()), Value::Str("Tree".into())),
        (
            Value::Str("node".into()),
            Value::List(vec![Value::Dict(vec![
                (Value::Str("v".into()), Value::Str("root".into())),
                (Value::Str("node".into()), Value::List(vec![leaf("a"), leaf("b")])),
            ])]),
        ),
    ]);
    let md = microdata::serialize(&obj).unwrap();
    assert_eq!(
        md,
        "<div itemscope itemtype=\"//refin.io/Tree\"><ol itemprop=\"node\"><li><div><span itemprop=\"v\">root</span><ol itemprop=\"node\"><li><div><span itemprop=\"v\">a</span></div></li><li><div><span itemprop=\"v\">b</span></div></li></ol></div></li></ol></div>"
    );
    assert_eq!(microdata::parse(&md).unwrap(), obj);
    // objects.md §1.9 "Correction": inheritance resolves one level, so the `node` of a second
    // level node is a plain string (as the Questionnaire `item` below the second level)
    let third = Value::Dict(vec![
        (Value::Str("$type$".into()), Value::Str("Tree".into())),
        (
            Value::Str("node".into()),
            Value::List(vec![Value::Dict(vec![
                (Value::Str("v".into()), Value::Str("root".into())),
                (
                    Value::Str("node".into()),
                    Value::List(vec![Value::Dict(vec![
                        (Value::Str("v".into()), Value::Str("a".into())),
                        (Value::Str("node".into()), Value::Str("deeper".into())),
                    ])]),
                ),
            ])]),
        ),
    ]);
    let md3 = microdata::serialize(&third).unwrap();
    assert!(md3.contains("<span itemprop=\"v\">a</span><span itemprop=\"node\">deeper</span>"), "{md3}");
    assert_eq!(microdata::parse(&md3).unwrap(), third);
    // adversarially deep microdata is an error, not a stack overflow
    let mut deep = String::from("<div itemscope itemtype=\"//refin.io/Tree\"><ol itemprop=\"node\">");
    for _ in 0..5000 {
        deep.push_str("<li><div><span itemprop=\"v\">x</span><ol itemprop=\"node\">");
    }
    assert_eq!(microdata::parse(&deep).unwrap_err().kind, lama_core::ErrorKind::Microdata);
}
