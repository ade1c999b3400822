//! Reverse maps (objects.md §5.3; docs/store-format.md `rmaps`, `meta`).
//!
//! Enabled per referencing type and map kind (`O` object maps, `I` ID-object maps) with a set
//! of itemprops or all (`*`). Built-in, always on and not stored: object maps for `Access`,
//! `Group`, `IdAccess`, `Keys`; ID-object maps for `Access`, `IdAccess`, `Instance`. Others are
//! persisted in `meta` under `rmap.O.<Type>` / `rmap.I.<Type>` as a JSON array of itemprops.

use std::collections::HashMap;

use heed::RoTxn;

use super::keys::{rmap_key, rmap_prefix};
use super::{parse_hash, Store, K_ID, K_OBJECT};
use crate::error::{Error, Result};
use crate::hash::hash_bytes;
use crate::microdata;

pub(crate) const MAP_OBJECT: u8 = b'O';
pub(crate) const MAP_ID: u8 = b'I';

const BUILTIN_OBJECT: &[&str] = &["Access", "Group", "IdAccess", "Keys"];
const BUILTIN_ID: &[&str] = &["Access", "IdAccess", "Instance"];

/// The itemprops a reverse map is enabled for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Props {
    /// `*`: every reference.
    All,
    /// References whose path has a segment equal to one of these itemprops.
    Some(Vec<String>),
}

impl Props {
    /// objects.md §5.3: a path like `a.0.b` matches if any segment equals an enabled itemprop.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Props::All => true,
            Props::Some(props) => path.split('.').any(|seg| props.iter().any(|p| p == seg)),
        }
    }

    fn from_json(bytes: &[u8]) -> Option<Props> {
        let list: Vec<String> = serde_json::from_slice(bytes).ok()?;
        if list.iter().any(|p| p == "*") {
            Some(Props::All)
        } else {
            Some(Props::Some(list))
        }
    }

    fn to_json(&self) -> String {
        match self {
            Props::All => "[\"*\"]".to_string(),
            Props::Some(list) => serde_json::to_string(list).expect("strings serialize"),
        }
    }

    fn union(self, other: Props) -> Props {
        match (self, other) {
            (Props::Some(mut a), Props::Some(b)) => {
                for p in b {
                    if !a.contains(&p) {
                        a.push(p);
                    }
                }
                Props::Some(a)
            }
            _ => Props::All,
        }
    }
}

fn meta_key(map_kind: u8, type_name: &str) -> String {
    format!("rmap.{}.{type_name}", map_kind as char)
}

fn is_builtin(map_kind: u8, type_name: &str) -> bool {
    let list = if map_kind == MAP_ID { BUILTIN_ID } else { BUILTIN_OBJECT };
    list.contains(&type_name)
}

/// The reverse maps enabled in a store, as read inside one transaction.
#[derive(Debug, Default)]
pub(crate) struct RmapConfig {
    object: HashMap<String, Props>,
    id: HashMap<String, Props>,
}

impl RmapConfig {
    /// Props enabled for `type_name` in the map of `map_kind`, if any.
    pub(crate) fn props(&self, map_kind: u8, type_name: &str) -> Option<&Props> {
        if is_builtin(map_kind, type_name) {
            return Some(&Props::All);
        }
        if map_kind == MAP_ID { self.id.get(type_name) } else { self.object.get(type_name) }
    }
}

impl Store {
    /// Read the persisted reverse-map configuration (plus the built-ins) inside `txn`.
    pub(crate) fn rmap_config(&self, txn: &RoTxn) -> Result<RmapConfig> {
        read_rmap_config(&self.dbs(), txn)
    }

    /// Enable reverse maps for `type_name` (object maps, or ID-object maps with `id_objects`)
    /// for the itemprops `props` (`None` = all). Persisted; merges with what is enabled.
    pub fn enable_reverse_maps(&self, type_name: &str, props: Option<&[String]>, id_objects: bool) -> Result<()> {
        if type_name.is_empty() || type_name.contains('\0') {
            return Err(Error::recipe("LAMA-RMAP", format!("invalid type name {type_name:?}")));
        }
        let map_kind = if id_objects { MAP_ID } else { MAP_OBJECT };
        if is_builtin(map_kind, type_name) {
            return Ok(());
        }
        let new = match props {
            None => Props::All,
            Some(list) if list.iter().any(|p| p == "*") => Props::All,
            Some(list) => Props::Some(list.to_vec()),
        };
        let key = meta_key(map_kind, type_name);
        let dbs = self.dbs();
        let meta = dbs.meta;
        let mut txn = self.write_txn()?;
        let old = match meta.get(&txn, key.as_bytes())? {
            Some(v) => Some(Props::from_json(v).ok_or_else(|| corrupt_meta(key.as_bytes()))?),
            None => None,
        };
        let merged = match old.clone() {
            Some(o) => o.union(new),
            None => new,
        };
        if old.as_ref() == Some(&merged) {
            return Ok(()); // nothing new: no write transaction committed (no fsync)
        }
        meta.put(&mut txn, key.as_bytes(), merged.to_json().as_bytes())?;
        // The map is complete from now on: the objects of this type stored before it was
        // enabled get their entries in the same transaction (docs/store-format.md "Write
        // rules"; one pass over `objects`, only when the setting changes).
        let kind = if id_objects { K_ID } else { K_OBJECT };
        let mut entries = Vec::new();
        for item in dbs.objects.iter(&txn)? {
            let (h, v) = item?;
            let (Some(&k), Ok(referrer)) = (v.first(), <[u8; 32]>::try_from(h)) else { continue };
            if k != kind {
                continue;
            }
            let Ok(text) = std::str::from_utf8(&v[1..]) else { continue };
            if !matches!(microdata::type_of(text), Ok((t, _)) if t == type_name) {
                continue;
            }
            // an entry that does not parse is left out, as verify() reports it anyway
            let Ok(refs) = microdata::references(text) else { continue };
            for r in refs {
                if !merged.matches(&r.path) || old.as_ref().is_some_and(|o| o.matches(&r.path)) {
                    continue;
                }
                if let Some(target) = hash_bytes(&r.hash) {
                    entries.push(rmap_key(&target, map_kind, type_name, &referrer));
                }
            }
        }
        for k in entries {
            dbs.rmaps.put(&mut txn, &k, &[])?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Hashes of the `type_name` objects (or ID objects) that reference `target`.
    pub fn referencing(&self, target: &str, type_name: &str, id_objects: bool) -> Result<Vec<String>> {
        let t = parse_hash("target", target)?;
        let prefix = rmap_prefix(&t, if id_objects { MAP_ID } else { MAP_OBJECT }, type_name);
        let txn = self.read_txn()?;
        let mut out = Vec::new();
        for item in self.dbs().rmaps.prefix_iter(&txn, &prefix)? {
            let (k, _) = item?;
            if k.len() == prefix.len() + 32 {
                out.push(hex::encode(&k[prefix.len()..]));
            }
        }
        Ok(out)
    }
}

/// The persisted reverse-map configuration (plus the built-ins) inside `txn`; a damaged
/// setting is `StoreError LAMA-CORRUPT` (also checked when the store is opened).
pub(crate) fn read_rmap_config(dbs: &super::Dbs, txn: &RoTxn) -> Result<RmapConfig> {
    let mut cfg = RmapConfig::default();
    for item in dbs.meta.prefix_iter(txn, b"rmap.")? {
        let (k, v) = item?;
        let key = std::str::from_utf8(k).map_err(|_| corrupt_meta(k))?;
        let (map_kind, type_name) = match key.as_bytes().get(5..7) {
            Some([b'O', b'.']) => (MAP_OBJECT, &key[7..]),
            Some([b'I', b'.']) => (MAP_ID, &key[7..]),
            _ => return Err(corrupt_meta(k)),
        };
        let props = Props::from_json(v).ok_or_else(|| corrupt_meta(k))?;
        let map = if map_kind == MAP_ID { &mut cfg.id } else { &mut cfg.object };
        map.insert(type_name.to_string(), props);
    }
    Ok(cfg)
}

fn corrupt_meta(key: &[u8]) -> Error {
    Error::store("LAMA-CORRUPT", format!("bad reverse-map setting {:?} in meta", String::from_utf8_lossy(key)))
}
