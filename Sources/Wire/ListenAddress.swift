/// host:port for a listener (the sidecar's `--listen`, the collector's `--http`).
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public init(_ text: String) throws(ListenAddressError) {
        let notHostPort = ListenAddressError("a listen address is host:port, such as 0.0.0.0:3000, not \(text)")
        let authority: Authority
        do {
            authority = try Authority(text[...])
        } catch .noHost {
            guard let port = text.split(separator: ":").last else { throw notHostPort }
            throw ListenAddressError("a listen address needs a host, such as 0.0.0.0:\(port)")
        } catch {
            throw notHostPort
        }
        guard let port = authority.port else { throw notHostPort }
        self.host = authority.host
        self.port = port
    }
}

public struct ListenAddressError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
