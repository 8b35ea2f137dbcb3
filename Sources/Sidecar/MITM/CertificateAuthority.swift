import Crypto
import Foundation
import SwiftASN1
import X509

/// LLMTap's local certificate authority: clients in MITM mode trust it, and the sidecar signs a
/// leaf certificate with it for every allowlisted host they reach.
///
/// It lives in `--ca-dir` as `llmtap-ca.pem` (readable by all: clients need it) and
/// `llmtap-ca-key.pem` (mode 0600). It is made on the first start and reused after; a file that
/// is there but can't be read is an error naming it, never a reason to make a new CA, since that
/// would break the trust of every client already set up.
struct CertificateAuthority: Sendable {
    static let certificateFile = "llmtap-ca.pem"
    static let keyFile = "llmtap-ca-key.pem"

    let certificate: Certificate
    let key: P256.Signing.PrivateKey
    let certificatePath: String

    var pem: String {
        (try? certificate.serializeAsPEM().pemString) ?? ""
    }

    /// Loads the CA from `directory`, or creates it there if neither file exists yet.
    static func loadOrCreate(directory: String) throws(CertificateAuthorityError) -> (
        authority: CertificateAuthority, created: Bool
    ) {
        let certificatePath = (directory as NSString).appendingPathComponent(certificateFile)
        let keyPath = (directory as NSString).appendingPathComponent(keyFile)
        let manager = FileManager.default
        switch (manager.fileExists(atPath: certificatePath), manager.fileExists(atPath: keyPath)) {
        case (true, true):
            return (try load(certificatePath: certificatePath, keyPath: keyPath), false)
        case (false, false):
            return (try create(directory: directory, certificatePath: certificatePath, keyPath: keyPath), true)
        case (true, false):
            throw CertificateAuthorityError(
                "\(certificatePath) exists but its key \(keyPath) does not; restore the key, or remove both files to make a new CA (every client must then trust the new one)"
            )
        case (false, true):
            throw CertificateAuthorityError(
                "\(keyPath) exists but its certificate \(certificatePath) does not; restore it, or remove both files to make a new CA (every client must then trust the new one)"
            )
        }
    }

    static func load(certificatePath: String, keyPath: String) throws(CertificateAuthorityError) -> CertificateAuthority
    {
        let certificate: Certificate
        do {
            certificate = try Certificate(pemEncoded: try String(contentsOfFile: certificatePath, encoding: .utf8))
        } catch {
            throw CertificateAuthorityError(
                "cannot read the CA certificate \(certificatePath): \(error); fix or restore it (it is never replaced silently)"
            )
        }
        let key: P256.Signing.PrivateKey
        do {
            key = try P256.Signing.PrivateKey(pemRepresentation: try String(contentsOfFile: keyPath, encoding: .utf8))
        } catch {
            throw CertificateAuthorityError(
                "cannot read the CA key \(keyPath): \(error); fix or restore it (it is never replaced silently)")
        }
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw CertificateAuthorityError(
                "the CA key \(keyPath) does not belong to the certificate \(certificatePath)")
        }
        return CertificateAuthority(certificate: certificate, key: key, certificatePath: certificatePath)
    }

    private static func create(directory: String, certificatePath: String, keyPath: String)
        throws(CertificateAuthorityError) -> CertificateAuthority
    {
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let key = P256.Signing.PrivateKey()
            let name = try DistinguishedName {
                OrganizationName("LLMTap")
                CommonName("LLMTap local CA \(ProcessInfo.processInfo.hostName)")
            }
            let now = Date()
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(10 * 365 * 86_400),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: .init(key.publicKey))
                },
                issuerPrivateKey: .init(key)
            )
            // The key first, with its mode set before any byte is written.
            guard FileManager.default.createFile(atPath: keyPath, contents: nil, attributes: [.posixPermissions: 0o600])
            else {
                throw CertificateAuthorityError("cannot create \(keyPath)")
            }
            try Data(key.pemRepresentation.utf8).write(to: URL(fileURLWithPath: keyPath))
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyPath)
            try Data(certificate.serializeAsPEM().pemString.utf8).write(to: URL(fileURLWithPath: certificatePath))
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: certificatePath)
            return CertificateAuthority(certificate: certificate, key: key, certificatePath: certificatePath)
        } catch let error as CertificateAuthorityError {
            throw error
        } catch {
            throw CertificateAuthorityError("cannot create the CA in \(directory): \(error)")
        }
    }

    /// A leaf certificate for `host`: P-256, SAN = host, server auth, valid for `validity`.
    func mintLeaf(for host: String, validity: TimeInterval = 7 * 86_400) throws -> (
        certificate: Certificate, key: P256.Signing.PrivateKey
    ) {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let san: GeneralName =
            ipv4AddressBytes(host).map { .ipAddress(ASN1OctetString(contentBytes: ArraySlice($0))) } ?? .dnsName(host)
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(validity),
            issuer: self.certificate.subject, subject: try DistinguishedName { CommonName(host) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([san])
                AuthorityKeyIdentifier(
                    keyIdentifier: try? self.certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(self.key)
        )
        return (certificate, key)
    }
}

/// The four bytes of a dotted IPv4 address, or nil.
private func ipv4AddressBytes(_ host: String) -> [UInt8]? {
    let parts = host.split(separator: ".")
    guard parts.count == 4 else { return nil }
    let bytes = parts.compactMap { UInt8($0) }
    return bytes.count == 4 ? bytes : nil
}

struct CertificateAuthorityError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
