//! RFC 3161 time-stamps of the station log's checkpoints (docs/log.md):
//! the request the station sends a time-stamp authority, and the check of
//! its response, which the station runs on receipt and `verify` runs on a
//! package. ASN.1 types are RustCrypto's (`x509-tsp`, `cms`); signatures
//! and certificate paths are checked by `rustls-webpki`.
//!
//! A response proves that the bytes it names (by SHA-256) existed at its
//! `genTime`, by the TSA's word: its signer certificate must chain to an
//! anchor the verifier trusts and carry the time-stamping extended key
//! usage, valid at `genTime`.

use chrono::{DateTime, Utc};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::asn1::{Int, ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::Digest;
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const CONTENT_TYPE_ATTR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const MESSAGE_DIGEST_ATTR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-kp-timeStamping (1.3.6.1.5.5.7.3.8), as webpki wants it: the
/// OID's DER value bytes.
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// The largest response read: an authority's answer is a few KiB, and
/// the ASN.1 decoder's work grows faster than the input's size.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The media type of an RFC 3161 request over HTTP.
pub const QUERY_MEDIA_TYPE: &str = "application/timestamp-query";

/// Why a time-stamp is refused. Carries no content of what was stamped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimestampError {
    #[error("not an RFC 3161 time-stamp response ({0})")]
    Malformed(String),
    #[error("the time-stamp authority did not grant the request (PKIStatus {0}: 2 rejection, 3 waiting, 4-5 revocation)")]
    Refused(u8),
    #[error("the time-stamp covers other data (its SHA-256 imprint differs)")]
    OtherData,
    #[error("the time-stamp answers another request (nonce differs)")]
    OtherRequest,
    #[error("the time-stamp's signature does not verify with any certificate it carries")]
    BadSignature,
    #[error(
        "the time-stamp's signer is not a time-stamping certificate of a trusted authority ({0})"
    )]
    Untrusted(String),
}

/// A request for a time-stamp over `data`, with `nonce` (random bytes the
/// response must echo) and the signer's certificate asked for.
pub fn request(data: &[u8], nonce: [u8; 8]) -> Result<Vec<u8>, TimestampError> {
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: imprint(data)?,
        req_policy: None,
        nonce: Some(nonce_int(nonce)?),
        cert_req: true,
        extensions: None,
    };
    req.to_der().map_err(malformed)
}

/// What a checked time-stamp says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// When the authority says it stamped the data.
    pub time: DateTime<Utc>,
    /// The DER of the certificate whose key signed it.
    pub signer: Vec<u8>,
    /// That certificate's subject (RFC 4514), for the verdict: the root
    /// says which authorities may sign, this says which one did.
    pub signer_subject: String,
}

/// Checks a response to [`request`] on receipt: granted, over `data`,
/// answering `nonce`, signed by a certificate it carries. Whether that
/// certificate is to be trusted is [`verify`]'s question.
pub fn check_response(
    response: &[u8],
    data: &[u8],
    nonce: Option<[u8; 8]>,
) -> Result<Timestamp, TimestampError> {
    checked(response, data, nonce).map(|(stamp, _)| stamp)
}

/// [`check_response`], with the SignedData it opened.
fn checked(
    response: &[u8],
    data: &[u8],
    nonce: Option<[u8; 8]>,
) -> Result<(Timestamp, SignedData), TimestampError> {
    let (tst, signed) = open(response)?;
    signed_attributes_as_sent(&signed, response)?;
    // The algorithm by OID (an authority may echo absent or NULL
    // parameters) and the hash itself.
    let want = imprint(data)?;
    if tst.message_imprint.hash_algorithm.oid != want.hash_algorithm.oid
        || tst.message_imprint.hashed_message != want.hashed_message
    {
        return Err(TimestampError::OtherData);
    }
    if let Some(n) = nonce {
        if tst.nonce != Some(nonce_int(n)?) {
            return Err(TimestampError::OtherRequest);
        }
    }
    let signer = signer_certificate(&signed)?;
    let signer_subject = <cms::cert::x509::Certificate as Decode>::from_der(&signer)
        .map(|c| c.tbs_certificate.subject.to_string())
        .map_err(malformed)?;
    let time = DateTime::<Utc>::from(tst.gen_time.to_system_time());
    Ok((
        Timestamp {
            time,
            signer,
            signer_subject,
        },
        signed,
    ))
}

/// Checks a response over `data` in full: [`check_response`] (with the
/// request's `nonce`, when checked on receipt), and its signer chains to
/// one of `anchors` (DER certificates), with the time-stamping extended
/// key usage, at the stamp's own time.
pub fn verify(
    response: &[u8],
    data: &[u8],
    nonce: Option<[u8; 8]>,
    anchors: &[Vec<u8>],
) -> Result<Timestamp, TimestampError> {
    let (stamp, signed) = checked(response, data, nonce)?;
    let others: Vec<CertificateDer<'static>> = carried_certificates(&signed)?
        .into_iter()
        .filter(|c| *c != stamp.signer)
        .map(CertificateDer::from)
        .collect();
    let anchor_ders: Vec<CertificateDer<'_>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.as_slice()))
        .collect();
    let trust: Vec<_> = anchor_ders
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TimestampError::Untrusted(format!("an anchor is not a certificate: {e:?}")))?;
    let signer_der = CertificateDer::from(stamp.signer.as_slice());
    let signer = webpki::EndEntityCert::try_from(&signer_der)
        .map_err(|e| TimestampError::Untrusted(format!("{e:?}")))?;
    let secs = u64::try_from(stamp.time.timestamp())
        .map_err(|_| TimestampError::Malformed("a time before 1970".into()))?;
    signer
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust,
            &others,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
            webpki::KeyUsage::required(EKU_TIME_STAMPING),
            None,
            None,
        )
        .map_err(|e| TimestampError::Untrusted(format!("{e:?}")))?;
    Ok(stamp)
}

/// Reads certificates (PEM, any number) into DER, for [`verify`]'s anchors.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, TimestampError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| TimestampError::Untrusted(format!("not PEM certificates: {e:?}")))?;
    if certs.is_empty() {
        return Err(TimestampError::Untrusted(
            "no certificate in the PEM".into(),
        ));
    }
    Ok(certs)
}

fn malformed(e: der::Error) -> TimestampError {
    TimestampError::Malformed(e.to_string())
}

fn imprint(data: &[u8]) -> Result<MessageImprint, TimestampError> {
    Ok(MessageImprint {
        hash_algorithm: cms::cert::x509::spki::AlgorithmIdentifier {
            oid: SHA256,
            parameters: Some(Any::null()),
        },
        hashed_message: OctetString::new(sha2::Sha256::digest(data).to_vec()).map_err(malformed)?,
    })
}

/// A positive, minimally encoded INTEGER of the nonce's bytes.
fn nonce_int(mut nonce: [u8; 8]) -> Result<Int, TimestampError> {
    nonce[0] = (nonce[0] & 0x7f) | 0x01;
    Int::new(&nonce).map_err(malformed)
}

/// The granted response's TSTInfo and the SignedData around it, with the
/// signer's signed attributes binding that TSTInfo.
fn open(response: &[u8]) -> Result<(TstInfo, SignedData), TimestampError> {
    if response.len() > MAX_RESPONSE {
        return Err(TimestampError::Malformed(format!(
            "larger than {MAX_RESPONSE} bytes"
        )));
    }
    let resp = TimeStampResp::from_der(response).map_err(malformed)?;
    let status = resp.status.status as u8;
    if status > 1 {
        return Err(TimestampError::Refused(status));
    }
    let token: ContentInfo = resp
        .time_stamp_token
        .ok_or_else(|| TimestampError::Malformed("granted, but no token".into()))?;
    if token.content_type != SIGNED_DATA {
        return Err(TimestampError::Malformed(
            "the token is not signed data".into(),
        ));
    }
    let signed: SignedData = token.content.decode_as().map_err(malformed)?;
    if signed.encap_content_info.econtent_type != TST_INFO {
        return Err(TimestampError::Malformed(
            "the token holds no TSTInfo".into(),
        ));
    }
    let econtent = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| TimestampError::Malformed("the token's content is detached".into()))?;
    let tst_der = econtent.value().to_vec();
    let tst = TstInfo::from_der(&tst_der).map_err(malformed)?;
    if signed.signer_infos.0.len() != 1 {
        return Err(TimestampError::Malformed(
            "a token has exactly one signer".into(),
        ));
    }
    let Some(si) = signed.signer_infos.0.get(0) else {
        return Err(TimestampError::Malformed("no signer".into()));
    };
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TimestampError::Malformed("the signer signed no attributes".into()))?;
    let attr = |oid: ObjectIdentifier| {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (Some(a), None) if a.values.len() == 1 => Ok(a.values.get(0).cloned()),
            _ => Err(TimestampError::Malformed(format!(
                "the signed attribute {oid} is not there once"
            ))),
        }
    };
    let content_type: ObjectIdentifier = attr(CONTENT_TYPE_ATTR)?
        .ok_or_else(|| TimestampError::Malformed("content type".into()))?
        .decode_as()
        .map_err(malformed)?;
    if content_type != TST_INFO {
        return Err(TimestampError::Malformed(
            "the signed content type is not TSTInfo".into(),
        ));
    }
    let digest: OctetString = attr(MESSAGE_DIGEST_ATTR)?
        .ok_or_else(|| TimestampError::Malformed("message digest".into()))?
        .decode_as()
        .map_err(malformed)?;
    let want = match si.digest_alg.oid {
        o if o == SHA256 => sha2::Sha256::digest(&tst_der).to_vec(),
        o if o == SHA384 => sha2::Sha384::digest(&tst_der).to_vec(),
        o if o == SHA512 => sha2::Sha512::digest(&tst_der).to_vec(),
        _ => {
            return Err(TimestampError::Malformed(
                "the signer's digest is not SHA-2".into(),
            ))
        }
    };
    if digest.as_bytes() != want.as_slice() {
        return Err(TimestampError::BadSignature);
    }
    Ok((tst, signed))
}

/// The signer's attributes re-encoded (what the signature is checked
/// over) must be the bytes the response carries: a response whose
/// attributes are not in DER order is refused rather than checked over
/// bytes its signer did not sign.
fn signed_attributes_as_sent(signed: &SignedData, response: &[u8]) -> Result<(), TimestampError> {
    let si = signed
        .signer_infos
        .0
        .get(0)
        .ok_or_else(|| TimestampError::Malformed("no signer".into()))?;
    let mut implicit = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TimestampError::Malformed("no signed attributes".into()))?
        .to_der()
        .map_err(malformed)?;
    // [0] IMPLICIT, constructed, in place of the SET tag.
    if let Some(tag) = implicit.first_mut() {
        *tag = 0xa0;
    }
    if response
        .windows(implicit.len())
        .any(|w| w == implicit.as_slice())
    {
        Ok(())
    } else {
        Err(TimestampError::Malformed(
            "the signed attributes are not DER-encoded".into(),
        ))
    }
}

fn carried_certificates(signed: &SignedData) -> Result<Vec<Vec<u8>>, TimestampError> {
    let mut out = Vec::new();
    if let Some(set) = &signed.certificates {
        for c in set.0.iter() {
            if let CertificateChoices::Certificate(cert) = c {
                out.push(cert.to_der().map_err(malformed)?);
            }
        }
    }
    Ok(out)
}

/// The carried certificate whose key made the signer's signature over its
/// signed attributes (DER, as a SET OF).
fn signer_certificate(signed: &SignedData) -> Result<Vec<u8>, TimestampError> {
    let si = signed
        .signer_infos
        .0
        .get(0)
        .ok_or_else(|| TimestampError::Malformed("no signer".into()))?;
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| TimestampError::Malformed("no signed attributes".into()))?
        .to_der()
        .map_err(malformed)?;
    let sig = si.signature.as_bytes();
    for der in carried_certificates(signed)? {
        let cd = CertificateDer::from(der.as_slice());
        let Ok(cert) = webpki::EndEntityCert::try_from(&cd) else {
            continue;
        };
        if webpki::ALL_VERIFICATION_ALGS
            .iter()
            .any(|alg| cert.verify_signature(*alg, &attrs, sig).is_ok())
        {
            return Ok(der);
        }
    }
    Err(TimestampError::BadSignature)
}
