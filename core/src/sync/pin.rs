//! The station's TLS identity as a device sees it (the station prints
//! it, the sync client holds every connection to it).
//!
//! A device pins the station's public key when it enrolls: the SHA-256 of
//! the certificate's SubjectPublicKeyInfo, written `sha256//<base64>` as
//! curl's `--pinnedpubkey` takes it. Every later connection must present
//! that key or is refused before a byte of a request is sent
//! ([`Error::PinMismatch`]). Pinning the key rather than the certificate
//! lets the station renew its certificate with the same key.
//!
//! The pin replaces the web's certificate authorities on purpose: a
//! station is usually reached by a bare IP address with a self-signed
//! certificate, and a pin also refuses a certificate some authority was
//! tricked into issuing.

use std::fmt;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StationPin([u8; 32]);

const PREFIX: &str = "sha256//";

impl StationPin {
    /// Parses `sha256//<base64 of 32 bytes>`.
    pub fn parse(s: &str) -> Result<StationPin> {
        let b64 = s.trim().strip_prefix(PREFIX).ok_or(Error::BadPin {
            reason: "a pin starts with sha256//",
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Error::BadPin {
                reason: "not base64",
            })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::BadPin {
            reason: "not 32 bytes",
        })?;
        Ok(StationPin(arr))
    }

    /// The pin of a DER certificate's public key.
    pub fn of_certificate(der: &[u8]) -> Result<StationPin> {
        let der = CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| Error::BadPin {
            reason: "not an X.509 certificate",
        })?;
        let spki = cert.subject_public_key_info();
        Ok(StationPin(Sha256::digest(spki.as_ref()).into()))
    }
}

impl fmt::Display for StationPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for StationPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StationPin({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_bad_pins_are_typed() {
        let pin = StationPin([7; 32]);
        let text = pin.to_string();
        assert!(text.starts_with("sha256//"));
        assert_eq!(StationPin::parse(&text).unwrap(), pin);
        for bad in [
            "",
            "sha1//AAAA",
            "sha256//not base64!",
            "sha256//AAAA",
            &text[8..],
        ] {
            assert!(
                matches!(StationPin::parse(bad), Err(Error::BadPin { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            StationPin::of_certificate(b"not a certificate"),
            Err(Error::BadPin { .. })
        ));
    }
}
