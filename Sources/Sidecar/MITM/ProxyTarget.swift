import Wire

/// What a MITM client asks the proxy to reach, read with the one authority parser (`Authority`),
/// and checked: a port from 1 to 65535 and a host fit to dial.
enum ProxyTarget {
    /// A CONNECT target: `host:port` (IPv6 in brackets), the host lowercased; nil without a port.
    static func connect(_ text: String) -> (host: String, port: Int)? {
        guard let authority = try? Authority(text[...]), let port = authority.port, (1...65535).contains(port),
            authority.hasDialableHost
        else { return nil }
        return (authority.host.lowercased(), port)
    }

    /// The scheme, host (lowercased) and port (the scheme's when none is given) of an absolute-form target.
    static func absolute(_ uri: String) -> (scheme: String, host: String, port: Int)? {
        guard let url = try? AbsoluteURL(uri), (1...65535).contains(url.port), url.authority.hasDialableHost else {
            return nil
        }
        return (url.scheme, url.authority.host.lowercased(), url.port)
    }
}
