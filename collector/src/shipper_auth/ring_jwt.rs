//! jsonwebtoken's signatures computed by ring (see Cargo.toml for why): RSA PKCS#1 v1.5 and
//! PSS with SHA-256/384/512 (2048 to 8192 bits), ECDSA P-256 and P-384. No HMAC (a shared
//! secret cannot prove which shipper sent a token) and no EdDSA (Kubernetes does not sign
//! ServiceAccount tokens with it).
//!
//! Signing is here too, for keys given as jsonwebtoken's `EncodingKey` (RSA PKCS#1 DER, EC
//! PKCS#8 DER): the tests sign their tokens with it.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as rs;

/// ring as jsonwebtoken's crypto provider.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_of_private,
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ec_pub_components_from_private_key: ec_components_of_private,
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        compute_digest: digest,
    },
};

/// Makes [`PROVIDER`] jsonwebtoken's for this process; calling it again is harmless. Call it
/// before the first token is verified or signed.
pub fn install() {
    if let Err(other) = PROVIDER.install_default() {
        // Only this function installs one.
        debug_assert!(std::ptr::eq(other, &PROVIDER));
    }
}

fn verification(alg: Algorithm) -> Result<&'static dyn rs::VerificationAlgorithm, Error> {
    Ok(match alg {
        Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    })
}

/// A public key and the algorithm its signatures are checked with.
struct Verifier {
    alg: Algorithm,
    ring: &'static dyn rs::VerificationAlgorithm,
    key: DecodingKey,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Verifier {
        alg: *alg,
        ring: verification(*alg)?,
        key: key.clone(),
    }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match self.key.kind() {
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                rs::RsaPublicKeyComponents { n, e }.verify(
                    // Components are checked against the RSA parameters of the algorithm.
                    rsa_params(self.alg).ok_or_else(signature::Error::new)?,
                    msg,
                    sig,
                )
            }
            // PKCS#1 RSAPublicKey DER, or an uncompressed EC point.
            DecodingKeyKind::SecretOrDer(der) => {
                rs::UnparsedPublicKey::new(self.ring, der).verify(msg, sig)
            }
        };
        ok.map_err(|_| signature::Error::new())
    }
}

fn rsa_params(alg: Algorithm) -> Option<&'static rs::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

enum SigningKey {
    Rsa(rs::RsaKeyPair, &'static dyn rs::RsaEncoding),
    Ecdsa(rs::EcdsaKeyPair),
}

struct Signer {
    alg: Algorithm,
    key: SigningKey,
}

fn key_rejected(e: ring::error::KeyRejected) -> Error {
    ErrorKind::InvalidRsaKey(e.to_string()).into()
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let rsa = |enc: &'static dyn rs::RsaEncoding| -> Result<SigningKey, Error> {
        Ok(SigningKey::Rsa(
            rs::RsaKeyPair::from_der(key.as_bytes()).map_err(key_rejected)?,
            enc,
        ))
    };
    let ecdsa = |a: &'static rs::EcdsaSigningAlgorithm| -> Result<SigningKey, Error> {
        let rng = ring::rand::SystemRandom::new();
        rs::EcdsaKeyPair::from_pkcs8(a, key.as_bytes(), &rng)
            .map(SigningKey::Ecdsa)
            .map_err(|_| ErrorKind::InvalidEcdsaKey.into())
    };
    let key = match alg {
        Algorithm::RS256 => rsa(&rs::RSA_PKCS1_SHA256)?,
        Algorithm::RS384 => rsa(&rs::RSA_PKCS1_SHA384)?,
        Algorithm::RS512 => rsa(&rs::RSA_PKCS1_SHA512)?,
        Algorithm::PS256 => rsa(&rs::RSA_PSS_SHA256)?,
        Algorithm::PS384 => rsa(&rs::RSA_PSS_SHA384)?,
        Algorithm::PS512 => rsa(&rs::RSA_PSS_SHA512)?,
        Algorithm::ES256 => ecdsa(&rs::ECDSA_P256_SHA256_FIXED_SIGNING)?,
        Algorithm::ES384 => ecdsa(&rs::ECDSA_P384_SHA384_FIXED_SIGNING)?,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(Signer { alg: *alg, key }))
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.key {
            SigningKey::Rsa(pair, enc) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*enc, &rng, msg, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
            SigningKey::Ecdsa(pair) => pair
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// (n, e) of an RSA private key in PKCS#1 DER.
fn rsa_components_of_private(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = rs::RsaKeyPair::from_der(der).map_err(key_rejected)?;
    let c = rs::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((c.n, c.e))
}

/// The curve and (x, y) of an EC private key in PKCS#8 DER.
fn ec_components_of_private(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (signing, curve, len) = match alg {
        Algorithm::ES256 => (
            &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &rs::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let rng = ring::rand::SystemRandom::new();
    let pair = rs::EcdsaKeyPair::from_pkcs8(signing, der, &rng)
        .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    // An uncompressed point: 0x04, x, y.
    let point = rs::KeyPair::public_key(&pair).as_ref();
    if point.len() != 1 + 2 * len || point[0] != 4 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    Ok((curve, point[1..1 + len].to_vec(), point[1 + len..].to_vec()))
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token signed with an algorithm the key is not for is refused, not verified with
    /// the wrong primitive (an RSA key named by an ES256 header).
    #[test]
    fn a_key_of_another_family_is_refused() {
        install();
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc3; 256], &[1, 0, 1]);
        assert!(new_verifier(&Algorithm::ES256, &rsa).is_err());
        assert!(new_verifier(&Algorithm::HS256, &rsa).is_err());
        assert!(new_verifier(&Algorithm::RS256, &rsa).is_ok());
    }
}
