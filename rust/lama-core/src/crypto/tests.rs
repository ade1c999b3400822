//! The primitives against `tests/vectors/crypto-and-frames.json` (section `primitives`, and
//! the scrypt / secretbox values of section `keychain`).

use super::*;
use crate::ErrorKind;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/crypto-and-frames.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("vector json")
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn label32(v: &Value) -> Vec<u8> {
    Sha256::digest(v.as_str().unwrap().as_bytes()).to_vec()
}

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn box_before_both_sides() {
    let v = &vectors()["primitives"]["box_before"];
    for who in ["alice", "bob"] {
        let sk = label32(&v[who]["label"]);
        assert_eq!(sk, hx(&v[who]["secretKey"]));
        assert_eq!(box_public_from_secret(&sk).unwrap().to_vec(), hx(&v[who]["publicKey"]));
    }
    let shared = hx(&v["shared_key"]);
    let a = box_before(&hx(&v["bob"]["publicKey"]), &hx(&v["alice"]["secretKey"])).unwrap();
    let b = box_before(&hx(&v["alice"]["publicKey"]), &hx(&v["bob"]["secretKey"])).unwrap();
    assert_eq!(a.to_vec(), shared);
    assert_eq!(b.to_vec(), shared);
}

#[test]
fn secretbox_cases() {
    let v = &vectors()["primitives"]["secretbox"];
    let key = label32(&v["key_label"]);
    let nonce = label32(&v["nonce_label"])[..24].to_vec();
    assert_eq!(key, hx(&v["key"]));
    assert_eq!(nonce, hx(&v["nonce"]));
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let len = case["msg_len"].as_u64().unwrap() as usize;
        let msg = message(len);
        let sealed = secretbox_seal(&msg, &nonce, &key).unwrap();
        let embedded = secretbox_seal_embedded(&msg, &key, Some(&nonce)).unwrap();
        assert_eq!(sealed.len() as u64, case["secretbox_len"].as_u64().unwrap());
        if let Some(m) = case.get("msg_hex") {
            assert_eq!(msg, hx(m));
            assert_eq!(sealed, hx(&case["secretbox_hex"]));
            assert_eq!(embedded, hx(&case["embedded_hex"]));
        } else {
            assert_eq!(hex::encode(Sha256::digest(&msg)), case["msg_sha256"].as_str().unwrap());
            assert!(hex::encode(&sealed).starts_with(case["secretbox_hex_prefix"].as_str().unwrap()));
            assert_eq!(hex::encode(Sha256::digest(&sealed)), case["secretbox_sha256"].as_str().unwrap());
            assert_eq!(hex::encode(Sha256::digest(&embedded)), case["embedded_sha256"].as_str().unwrap());
        }
        assert_eq!(secretbox_open(&sealed, &nonce, &key).unwrap(), msg);
        assert_eq!(secretbox_open_embedded(&embedded, &key).unwrap(), msg);
        // every tampered byte position class is rejected: tag, ciphertext, nonce
        for pos in [0, 15, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x01;
            let e = secretbox_open(&bad, &nonce, &key).unwrap_err();
            assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Decryption, "CYENC-SYMDEC"));
        }
        let mut bad = embedded.clone();
        bad[3] ^= 0x80;
        assert_eq!(secretbox_open_embedded(&bad, &key).unwrap_err().kind, ErrorKind::Decryption);
    }
}

#[test]
fn box_embedded() {
    let p = &vectors()["primitives"];
    let v = &p["box_embedded"];
    let (alice, bob) = (&p["box_before"]["alice"], &p["box_before"]["bob"]);
    let nonce = label32(&v["nonce_label"])[..24].to_vec();
    assert_eq!(nonce, hx(&v["nonce"]));
    let msg = v["msg_utf8"].as_str().unwrap().as_bytes().to_vec();
    assert_eq!(msg, hx(&v["msg_hex"]));
    let sealed = box_seal_embedded(&msg, &hx(&alice["secretKey"]), &hx(&bob["publicKey"]), Some(&nonce)).unwrap();
    assert_eq!(sealed, hx(&v["embedded_hex"]));
    let opened = box_open_embedded(&sealed, &hx(&bob["secretKey"]), &hx(&alice["publicKey"])).unwrap();
    assert_eq!(opened, msg);
    // a third party cannot open it
    let (_, eve) = box_keypair();
    let e = box_open_embedded(&sealed, &eve, &hx(&alice["publicKey"])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Decryption);
}

#[test]
fn ed25519_from_seed_and_signatures() {
    let v = &vectors()["primitives"]["ed25519"];
    let seed = label32(&v["seed_label"]);
    assert_eq!(seed, hx(&v["seed"]));
    let (pk, sk) = sign_keypair_from_seed(&seed).unwrap();
    assert_eq!(pk.to_vec(), hx(&v["publicKey"]));
    assert_eq!(sk.to_vec(), hx(&v["secretKey"]));
    let sigs = v["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 3);
    for case in sigs {
        let msg = hx(&case["msg_hex"]);
        assert_eq!(msg.len() as u64, case["msg_len"].as_u64().unwrap());
        let sig = sign_detached(&msg, &sk).unwrap();
        assert_eq!(sig.to_vec(), hx(&case["signature_hex"]));
        sign_verify_detached(&msg, &sig, &pk).unwrap();
        let mut bad = sig;
        bad[10] ^= 0x04;
        let e = sign_verify_detached(&msg, &bad, &pk).unwrap_err();
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Signature, "LAMA-SIGNATURE"));
        let mut other = msg.clone();
        other.push(0);
        assert_eq!(sign_verify_detached(&other, &sig, &pk).unwrap_err().kind, ErrorKind::Signature);
    }
    // a secret key whose public half does not belong to the seed is refused
    let mut mixed = sk;
    mixed[40] ^= 1;
    assert_eq!(sign_detached(b"x", &mixed).unwrap_err().code, "LAMA-SIGNKEY");
}

#[test]
fn inverted_challenge() {
    let v = &vectors()["primitives"]["inverted_challenge"];
    let (server, client) = (&v["server"], &v["client"]);
    for who in [server, client] {
        assert_eq!(label32(&who["label"]), hx(&who["secretKey"]));
        assert_eq!(box_public_from_secret(&hx(&who["secretKey"])).unwrap().to_vec(), hx(&who["publicKey"]));
    }
    let shared = box_before(&hx(&client["publicKey"]), &hx(&server["secretKey"])).unwrap();
    assert_eq!(shared.to_vec(), hx(&v["shared_key"]));
    let challenge = Sha512::digest(v["challenge_label"].as_str().unwrap().as_bytes()).to_vec();
    assert_eq!(challenge, hx(&v["challenge"]));
    let sent = box_seal_embedded(&challenge, &hx(&server["secretKey"]), &hx(&client["publicKey"]), Some(&hx(&v["challenge_nonce"]))).unwrap();
    assert_eq!(sent, hx(&v["challenge_ciphertext"]));
    let got = box_open_embedded(&sent, &hx(&client["secretKey"]), &hx(&server["publicKey"])).unwrap();
    let inverted: Vec<u8> = got.iter().map(|b| !b).collect();
    assert_eq!(inverted, hx(&v["inverted_challenge"]));
    let reply = secretbox_seal_embedded(&inverted, &shared, Some(&hx(&v["response_nonce"]))).unwrap();
    assert_eq!(reply, hx(&v["response_ciphertext"]));
    let back = box_open_embedded(&reply, &hx(&server["secretKey"]), &hx(&client["publicKey"])).unwrap();
    assert_eq!(back, inverted);
}

#[test]
fn session_nonces_and_padding() {
    let p = &vectors()["primitives"];
    for case in p["session_nonce_counter"]["cases"].as_array().unwrap() {
        assert_eq!(session_nonce(case["counter"].as_u64().unwrap()).to_vec(), hx(&case["nonce"]));
    }
    let cases = p["padding"]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let r = case["random_byte"].as_u64().unwrap() as u8;
        let flags = case["flags"].as_u64().unwrap() as u8;
        let value = hx(&case["value_hex"]);
        let filler: Vec<u8> = (0..r.saturating_sub(1) as usize).map(|i| (0xa0 + i) as u8).collect();
        let padded = frame_pad(&value, flags, r, &filler).unwrap();
        assert_eq!(padded, hx(&case["padded_hex"]));
        assert_eq!(padded.len() as u64, case["padded_len"].as_u64().unwrap());
        assert_eq!(frame_unpad(&padded).unwrap(), (flags, value));
    }
    assert_eq!(frame_unpad(&[0x11]).unwrap_err().code, "LAMA-PADDING");
    assert_eq!(frame_unpad(&[0x11, 5, 0]).unwrap_err().code, "LAMA-PADDING");
    assert_eq!(frame_pad(b"x", 1, 3, b"a").unwrap_err().code, "LAMA-PADDING");
}

#[test]
fn keychain_scrypt_and_files() {
    let k = &vectors()["keychain"];
    let secret = k["secret"].as_str().unwrap();
    assert_eq!(secret.as_bytes(), hx(&k["secret_utf8_nfkc_hex"]).as_slice());
    let salt = hx(&k["file_keychain_salt"]["bytes_hex"]);
    let derived = scrypt(secret.as_bytes(), &salt, 1024, 8, 1, 32).unwrap();
    assert_eq!(derived, hx(&k["derived_key"]));
    let mk = &k["file_keychain_masterkey"];
    let master = secretbox_open_embedded(&hx(&mk["bytes_hex"]), &derived).unwrap();
    assert_eq!(master, hx(&mk["plaintext_master_key"]));
    for who in ["person_keys", "instance_keys"] {
        let w = &k[who];
        let enc = secretbox_open_embedded(&hx(&w["file_encrypt"]["bytes_hex"]), &master).unwrap();
        assert_eq!(enc, hx(&w["file_encrypt"]["plaintext_secret_encryption_key"]));
        assert_eq!(box_public_from_secret(&enc).unwrap().to_vec(), hx(&w["public_encryption_key"]));
        let sign = secretbox_open_embedded(&hx(&w["file_sign"]["bytes_hex"]), &master).unwrap();
        assert_eq!(sign, hx(&w["file_sign"]["plaintext_secret_sign_key"]));
        assert_eq!(sign_keypair_from_seed(&sign[..32]).unwrap().0.to_vec(), hx(&w["public_sign_key"]));
    }
    // a wrong secret does not open the master key
    let wrong = scrypt(b"not the secret", &salt, 1024, 8, 1, 32).unwrap();
    assert_eq!(secretbox_open_embedded(&hx(&mk["bytes_hex"]), &wrong).unwrap_err().code, "CYENC-SYMDEC");
}

#[test]
fn scrypt_rfc7914_and_parameter_checks() {
    // RFC 7914 §12, second vector
    let out = scrypt(b"password", b"NaCl", 1024, 8, 16, 64).unwrap();
    assert_eq!(hex::encode(out), "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640");
    for (n, r, p, dk) in [(1000, 8, 1, 32), (1, 8, 1, 32), (1024, 0, 1, 32), (1024, 8, 0, 32), (1024, 8, 1, 0), (1 << 16, 1, 1, 32)] {
        let e = scrypt(b"pw", b"salt", n, r, p, dk).unwrap_err();
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Crypto, "LAMA-SCRYPT"));
    }
}

#[test]
fn lengths_are_checked() {
    let k = [7u8; 32];
    let n = [1u8; 24];
    let e = secretbox_seal(b"m", &n, &k[..31]).unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Crypto, "LAMA-KEYLEN"));
    assert_eq!(secretbox_open(&[0; 20], &n[..23], &k).unwrap_err().code, "LAMA-NONCELEN");
    assert_eq!(box_before(&k[..1], &k).unwrap_err().code, "LAMA-KEYLEN");
    assert_eq!(sign_verify_detached(b"", &[0; 63], &k).unwrap_err().code, "LAMA-SIGLEN");
    assert_eq!(secretbox_open(&[0; 15], &n, &k).unwrap_err().kind, ErrorKind::Decryption);
    assert_eq!(secretbox_open_embedded(&[0; 39], &k).unwrap_err().kind, ErrorKind::Decryption);
    // small-order public key (all zero) gives no shared secret
    assert_eq!(box_before(&[0; 32], &k).unwrap_err().code, "LAMA-WEAKKEY");
    assert_eq!(random_bytes(17).unwrap().len(), 17);
    assert_ne!(random_bytes(32).unwrap(), random_bytes(32).unwrap());
    let (pk, sk) = box_keypair();
    assert_eq!(box_public_from_secret(&sk).unwrap(), pk);
    let (spk, ssk) = sign_keypair();
    assert_eq!(&ssk[32..], &spk[..]);
}

/// Every recorded frame of section `encrypted-connection` opens with the session key and its
/// counter to the recorded payload, and seals again (recorded `r` and filler) to the recorded
/// bytes; the wrong counter does not open it (connections.md §2.4).
#[test]
fn encrypted_connection_frames_open_and_seal() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/crypto-and-frames.full-frames.json");
    let full: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let whole = |f: &Value, name: &str| -> Vec<u8> {
        match f.get(format!("{name}_full_ref")) {
            Some(r) => hx(&full["full"][r.as_str().unwrap()]),
            None => hx(&f[format!("{name}_hex")]),
        }
    };
    let mut n = 0;
    for conn in vectors()["encrypted-connection"]["connections"].as_array().unwrap() {
        let key = hx(&conn["handshake"]["session_key"]);
        for frames in conn["frames"].as_object().unwrap().values() {
            for f in frames.as_array().unwrap() {
                let counter = f["counter"].as_u64().unwrap();
                let wire = whole(f, "frame");
                // the recorded plaintext is padding || payload (payloads over 4 KiB are only
                // recorded inside their plaintext)
                let payload = whole(f, "plaintext")[f["padding"]["padding_total_len"].as_u64().unwrap() as usize..].to_vec();
                assert_eq!(payload.len() as u64, f["payload_len"].as_u64().unwrap());
                let flags = f["padding"]["flags"].as_u64().unwrap() as u8;
                assert_eq!(frame_open(&key, counter, wire.clone()).unwrap(), (flags, payload.clone()));
                let r = f["padding"]["random_byte_r"].as_u64().unwrap() as u8;
                let filler = hx(&f["padding"]["random_filler_hex"]);
                assert_eq!(frame_seal(&key, counter, &payload, flags, r, &filler).unwrap(), wire);
                let wrong = frame_open(&key, counter + 2, wire).unwrap_err();
                assert_eq!((wrong.kind, wrong.code.as_str()), (ErrorKind::Decryption, "CYENC-SYMDEC"));
                n += 1;
            }
        }
    }
    assert_eq!(n, 20 + 26 + 20);
}
