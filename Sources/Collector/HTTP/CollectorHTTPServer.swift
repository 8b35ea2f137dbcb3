import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The collector's HTTP listener (`--http`, default 0.0.0.0:9464).
enum CollectorHTTPServer {
    /// Binds now, so a bad address fails the start rather than later.
    static func bind(host: String, port: Int, group: MultiThreadedEventLoopGroup, api: APIContext, logger: Logger)
        async throws -> (any Channel)
    {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(APIHandler(api: api, logger: logger))
                }
            }
            .bind(host: host, port: port).get()
    }
}

/// Holds the bound listener until graceful shutdown, then closes it.
struct BoundHTTPServer: Service {
    let channel: any Channel

    func run() async throws {
        try? await gracefulShutdown()
        try? await channel.close()
    }
}
