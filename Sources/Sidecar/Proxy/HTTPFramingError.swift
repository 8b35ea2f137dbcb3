import NIOHTTP1

/// Bytes that break HTTP/1.1's message syntax or framing (RFC 9112), from either side: the one
/// error of the hand-written parsers (request, response, header lines, bodies). The connection
/// that carried them can't be trusted with another message.
struct HTTPFramingError: Error, CustomStringConvertible, Equatable {
    enum Reason: Equatable, Sendable {
        /// Not what RFC 9112 allows.
        case syntax
        /// Over a size or count limit of a head (a request gets 431 for it, not 400).
        case overLimit
    }

    let reason: Reason
    let description: String

    init(_ description: String, reason: Reason = .syntax) {
        self.reason = reason
        self.description = description
    }

    /// What a request that broke it is answered: 431 for a head over a limit, 400 otherwise.
    var status: HTTPResponseStatus { reason == .overLimit ? .requestHeaderFieldsTooLarge : .badRequest }
}
