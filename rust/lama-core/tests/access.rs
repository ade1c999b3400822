//! The access index through the Rust API (docs/chum-session.md §1; docs/store-format.md
//! "access index"): what the Rust CHUM exporter calls.

use lama_core::hash::{sha256_hex, Hash};
use lama_core::microdata::{self, Value};
use lama_core::store::{Root, RootKind, Store};

fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

fn obj(ty: &str, props: Vec<(&str, Value)>) -> Value {
    let mut entries = vec![(s("$type$"), s(ty))];
    entries.extend(props.into_iter().map(|(k, v)| (s(k), v)));
    Value::Dict(entries)
}

fn hash_of(v: &Value) -> String {
    sha256_hex(microdata::serialize(v).unwrap().as_bytes())
}

fn id_of(v: &Value) -> String {
    sha256_hex(microdata::id_microdata(v).unwrap().as_bytes())
}

fn h(x: &str) -> Hash {
    Hash::parse(x).unwrap()
}

/// Store `v` as the next version of its ID in CHANGE mode (objects.md §4.2): returns the node.
fn put_version(st: &Store, v: &Value, t: i64) -> String {
    let id = id_of(v);
    let data = hash_of(v);
    let head = st.get_head(&id).unwrap();
    let node = match &head {
        None => obj(
            "VersionNodeEdge",
            vec![("data", s(&data)), ("depth", Value::Int(0)), ("creationTime", Value::Int(t))],
        ),
        Some(prev) => obj(
            "VersionNodeChange",
            vec![
                ("prev", s(prev)),
                ("data", s(&data)),
                ("depth", Value::Int(1)),
                ("creationTime", Value::Int(t)),
            ],
        ),
    };
    let nh = hash_of(&node);
    st.write_batch(&[v.clone(), node], &[(id, head, nh.clone())]).unwrap();
    nh
}

fn person_ids(list: &[&str]) -> Value {
    Value::List(list.iter().map(|p| s(p)).collect())
}

fn hashes(roots: &[Root]) -> Vec<Hash> {
    roots.iter().map(|r| r.hash).collect()
}

const BOB: &str = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a";
const CAROL: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

#[test]
fn roots_groups_revocation_and_deltas() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let keys = obj(
        "Keys",
        vec![("owner", s(BOB)), ("publicKey", s(&"a".repeat(64))), ("publicSignKey", s(&"b".repeat(64)))],
    );
    let k = st.put_objects(&[keys]).unwrap()[0].hash.clone();
    let alice1 = obj("Person", vec![("email", s("alice")), ("name", s("A"))]);
    let pid = id_of(&alice1);
    let n1 = put_version(&st, &alice1, 1);

    // Access to Bob, IdAccess to a group Carol is in
    put_version(&st, &obj("Access", vec![("object", s(&k)), ("person", person_ids(&[BOB])), ("group", person_ids(&[]))]), 2);
    let group = obj("Group", vec![("name", s("friends")), ("person", person_ids(&[CAROL]))]);
    let gid = id_of(&group);
    put_version(&st, &group, 3);
    put_version(&st, &obj("IdAccess", vec![("id", s(&pid)), ("person", person_ids(&[])), ("group", person_ids(&[&gid]))]), 4);

    let (mark, bob) = st.accessible_roots(&h(BOB), 0).unwrap();
    assert_eq!(mark, st.last_seq().unwrap());
    assert_eq!(bob, vec![Root { kind: RootKind::Unversioned, hash: h(&k), id_hash: None, type_name: "Keys".into() }]);
    let (_, carol) = st.accessible_roots(&h(CAROL), 0).unwrap();
    assert_eq!(carol.len(), 2);
    assert_eq!((carol[0].kind, carol[0].hash, carol[0].type_name.as_str()), (RootKind::Id, h(&pid), "Person"));
    assert_eq!(carol[1].kind.as_str(), "version_node");
    assert_eq!((carol[1].hash, carol[1].id_hash), (h(&n1), Some(h(&pid))));

    // a new version reaches Carol at that write's sequence; the snapshot agrees
    let n2 = put_version(&st, &obj("Person", vec![("email", s("alice")), ("name", s("B"))]), 5);
    let snap = st.snapshot().unwrap();
    let (m2, delta) = snap.accessible_roots(&h(CAROL), mark).unwrap();
    assert_eq!(hashes(&delta), vec![h(&n2)]);
    assert_eq!(snap.accessible_roots(&h(CAROL), m2).unwrap().1, vec![]);
    drop(snap);

    // Carol leaves the group: she loses the IdAccess roots
    put_version(&st, &obj("Group", vec![("name", s("friends")), ("person", person_ids(&[]))]), 6);
    assert!(st.accessible_roots(&h(CAROL), 0).unwrap().1.is_empty());
    // Bob's Access is revoked by a new version with empty lists
    put_version(&st, &obj("Access", vec![("object", s(&k)), ("person", person_ids(&[])), ("group", person_ids(&[]))]), 7);
    assert!(st.accessible_roots(&h(BOB), 0).unwrap().1.is_empty());

    // a grant of something not stored is refused, nothing written
    let before = st.last_seq().unwrap();
    let bad = obj("Access", vec![("object", s(&"e".repeat(64))), ("person", person_ids(&[BOB])), ("group", person_ids(&[]))]);
    let node = obj("VersionNodeEdge", vec![("data", s(&hash_of(&bad))), ("depth", Value::Int(0)), ("creationTime", Value::Int(8))]);
    let err = st.write_batch(&[bad.clone(), node.clone()], &[(id_of(&bad), None, hash_of(&node))]).unwrap_err();
    assert_eq!(err.code, "LAMA-GRANT");
    assert_eq!(st.last_seq().unwrap(), before);

    assert_eq!(st.peer_mark("p").unwrap(), 0);
    st.set_peer_mark("p", 9).unwrap();
    assert_eq!(st.peer_mark("p").unwrap(), 9);
    assert_eq!(st.peer_mark("").unwrap_err().code, "LAMA-ARG");
    assert_eq!(st.verify().unwrap(), Vec::<String>::new());
}
