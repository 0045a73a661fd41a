//! The sync client's TLS: a verifier that accepts exactly the pinned
//! station key ([`StationPin`], see [`super::pin`]), and the check that a
//! station URL is HTTPS (or plain HTTP to this machine only).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

pub use super::pin::StationPin;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// Accepts exactly the pinned key; with no pin yet (enrollment without a
/// pin to check against), accepts the first key it sees and holds every
/// later handshake of this client to it.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pin: Mutex<Option<StationPin>>,
    mismatch: AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub(crate) fn new(pin: Option<StationPin>) -> Arc<PinVerifier> {
        Arc::new(PinVerifier {
            pin: Mutex::new(pin),
            mismatch: AtomicBool::new(false),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// The pin in force (the one seen first, when none was given).
    pub(crate) fn pin(&self) -> Option<StationPin> {
        *self.pin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a handshake was refused for presenting another key.
    pub(crate) fn mismatched(&self) -> bool {
        self.mismatch.load(Ordering::SeqCst)
    }

    pub(crate) fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig> {
        Ok(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Network(format!("TLS set-up: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(self.clone())
                .with_no_client_auth(),
        )
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = StationPin::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let mut pin = self.pin.lock().unwrap_or_else(|p| p.into_inner());
        match *pin {
            Some(p) if p != seen => {
                self.mismatch.store(true, Ordering::SeqCst);
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => {
                *pin = Some(seen);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    // The handshake signature still proves the server holds the pinned
    // key's private half.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks a station URL: `https://`, or plain `http://` only to this
/// machine (a station behind a local TLS proxy, or a test).
pub fn check_station_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Error::InsecureUrl {
        reason: "not a URL",
    })?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(Error::InsecureUrl {
                    reason: "plain http:// is only allowed to this machine; use https://",
                })
            }
        }
        _ => Err(Error::InsecureUrl {
            reason: "the station URL must start with https://",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://station.example:8787",
            "https://10.1.2.3",
            "http://127.0.0.1:8787",
            "http://localhost:1",
            "http://[::1]:8787",
        ] {
            assert!(check_station_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.1.2.3:8787",
            "http://station.example",
            "ftp://127.0.0.1",
            "station.example",
        ] {
            assert!(
                matches!(check_station_url(bad), Err(Error::InsecureUrl { .. })),
                "{bad}"
            );
        }
    }
}
