import NIOSSL
import Wire

/// The HTTPS listener's TLS, from the configuration's PEM certificate chain and key (RSA or
/// ECDSA), TLS 1.2 and 1.3: the context every connection gets, whose ALPN offers h2 and http/1.1,
/// and one offering http/1.1 alone, for a connection refused at --max-connections, whose 503 is
/// HTTP/1.1 (a client that chose h2 would read it as garbage).
struct ServerTLS: Sendable {
    let negotiating: NIOSSLContext
    let http1Only: NIOSSLContext

    init(certificate: String, key: String) throws {
        let chain = try NIOSSLCertificate.fromPEMFile(certificate)
        guard !chain.isEmpty else { throw ConfigurationError("\(certificate) holds no PEM certificate") }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ExchangePipeline.applicationProtocols
        negotiating = try NIOSSLContext(configuration: configuration)
        configuration.applicationProtocols = ["http/1.1"]
        http1Only = try NIOSSLContext(configuration: configuration)
    }
}
