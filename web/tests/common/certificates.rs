//! Certificates made for the tests.

use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

const DAY: i64 = 86_400;

/// A certificate for `host` valid from `from_days` to `to_days` around now, and its key, as PEM.
pub fn certificate(host: &str, from_days: i64, to_days: i64) -> (String, String, String) {
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, host).unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    let now = appliance::time::now_us() / 1_000_000;
    cert.set_not_before(&Asn1Time::from_unix(now + from_days * DAY).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::from_unix(now + to_days * DAY).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(host)
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let fingerprint = hex::encode(cert.digest(MessageDigest::sha256()).unwrap());
    (
        String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        fingerprint,
    )
}
