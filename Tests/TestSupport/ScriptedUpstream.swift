import Foundation

/// An upstream that answers every request with the same raw bytes, written in one `send`: for
/// what the mock upstream can't say (bytes that are not UTF-8, heads over a limit in one read,
/// framing headers in odd places). Plain TCP on loopback, one thread per connection.
public final class ScriptedUpstream: @unchecked Sendable {
    public let port: Int
    private let listener: Int32
    private let response: [UInt8]
    private let lock = NSLock()
    private var received: [[UInt8]] = []
    private var stopping = false

    public init(response: [UInt8]) throws {
        self.response = response
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(listener, 64) == 0 else {
            throw TestFailure("the scripted upstream can't listen: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in acceptLoop() }.start()
    }

    /// The request heads received, in order.
    public var requests: [[UInt8]] {
        lock.lock()
        defer { lock.unlock() }
        return received
    }

    private func acceptLoop() {
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            Thread { [self] in serve(connection) }.start()
        }
    }

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            // A whole head, then the body its Content-Length announces.
            while let end = Self.headEnd(pending) {
                let head = Array(pending[..<end])
                let length = Self.contentLength(head)
                while pending.count < end + length {
                    let count = recv(connection, &buffer, buffer.count, 0)
                    guard count > 0 else { return }
                    pending += buffer[0..<count]
                }
                pending.removeFirst(end + length)
                lock.lock()
                received.append(head)
                lock.unlock()
                _ = response.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            let count = recv(connection, &buffer, buffer.count, 0)
            guard count > 0 else { return }
            pending += buffer[0..<count]
        }
    }

    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 3..<bytes.count
        where bytes[index - 3] == 0x0D && bytes[index - 2] == 0x0A && bytes[index - 1] == 0x0D && bytes[index] == 0x0A {
            return index + 1
        }
        return nil
    }

    private static func contentLength(_ head: [UInt8]) -> Int {
        let text = String(decoding: head, as: UTF8.self).lowercased()
        guard let range = text.range(of: "\r\ncontent-length:") else { return 0 }
        let rest = text[range.upperBound...].prefix { $0 != "\r" }
        return Int(rest.trimmingCharacters(in: .whitespaces)) ?? 0
    }

    /// Closes the listener, once: a second close could hit a descriptor number reused since.
    public func stop() {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return }
        stopping = true
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    deinit { stop() }
}
