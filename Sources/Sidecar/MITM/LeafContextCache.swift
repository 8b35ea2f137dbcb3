import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// TLS server contexts for the hosts MITM clients reach, each with a leaf certificate minted by
/// the local CA, made off the event loops (on a thread pool) and kept by host. A burst of first
/// CONNECTs to one host mints once: the others wait for the same context.
final class LeafContextCache: Sendable {
    private enum Entry {
        case ready(NIOSSLContext, expires: Date)
        case minting([EventLoopPromise<NIOSSLContext>])
    }

    private let authority: CertificateAuthority
    private let pool: NIOThreadPool
    private let logger: Logger
    private let entries = Mutex<[String: Entry]>([:])
    /// Leaves are valid for a week and replaced a day before they expire.
    static let validity: TimeInterval = 7 * 86_400
    static let maxHosts = 10_000

    init(authority: CertificateAuthority, pool: NIOThreadPool, logger: Logger) {
        self.authority = authority
        self.pool = pool
        self.logger = logger
    }

    func context(for host: String, on eventLoop: any EventLoop) -> EventLoopFuture<NIOSSLContext> {
        let host = host.lowercased()
        let promise = eventLoop.makePromise(of: NIOSSLContext.self)
        let mintNow = entries.withLock { entries -> Bool in
            switch entries[host] {
            case .ready(let context, let expires) where expires.timeIntervalSinceNow > 86_400:
                promise.succeed(context)
                return false
            case .minting(var waiting):
                waiting.append(promise)
                entries[host] = .minting(waiting)
                return false
            case .ready, nil:
                if entries.count >= Self.maxHosts { entries.removeAll() }
                entries[host] = .minting([promise])
                return true
            }
        }
        if mintNow {
            pool.submit { [self] _ in mint(host) }
        }
        return promise.futureResult
    }

    private func mint(_ host: String) {
        let result: Result<NIOSSLContext, any Error>
        let started = ContinuousClock.now
        do {
            let (certificate, key) = try authority.mintLeaf(for: host, validity: Self.validity)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: [
                    .certificate(
                        try NIOSSLCertificate(
                            bytes: Array(try certificate.serializeAsPEM().pemString.utf8), format: .pem))
                ],
                privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem))
            )
            configuration.applicationProtocols = ExchangePipeline.applicationProtocols
            result = .success(try NIOSSLContext(configuration: configuration))
        } catch {
            result = .failure(error)
        }
        let waiting = entries.withLock { entries -> [EventLoopPromise<NIOSSLContext>] in
            guard case .minting(let waiting) = entries[host] else { return [] }
            switch result {
            case .success(let context):
                entries[host] = .ready(context, expires: Date().addingTimeInterval(Self.validity))
            case .failure: entries[host] = nil
            }
            return waiting
        }
        switch result {
        case .success:
            logger.debug(
                "minted a leaf certificate",
                metadata: ["host": "\(host)", "ms": "\((ContinuousClock.now - started).inMilliseconds)"])
        case .failure(let error):
            logger.error("cannot mint a leaf certificate", metadata: ["host": "\(host)", "error": "\(error)"])
        }
        for promise in waiting { promise.completeWith(result) }
    }
}
