import NIOCore

/// The framing bytes of chunked transfer coding (RFC 9112, section 7.1).
enum ChunkedFraming {
    static let crlf = ByteBuffer(string: "\r\n")
    static let lastChunk = ByteBuffer(string: "0\r\n\r\n")

    static func sizeLine(_ size: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        var line = allocator.buffer(capacity: 18)
        writeSizeLine(size, into: &line)
        return line
    }

    /// "1a2\r\n": a chunk's size in hex, as its line.
    static func writeSizeLine(_ size: Int, into buffer: inout ByteBuffer) {
        buffer.writeString(String(size, radix: 16))
        buffer.writeStaticString("\r\n")
    }
}

/// A response's bytes on their way to the client: the head is held until the end of the upstream
/// read that brought it, so a small body in the same read joins it and the client gets one write
/// (one TLS record in MITM mode); body pieces are re-chunked when the client's framing says so.
struct ClientResponseWriter {
    private var pending: ByteBuffer?

    /// The head, written by `HeaderRules.writeClientResponseHead`: held until `takePending`.
    mutating func hold(_ head: ByteBuffer) {
        pending = head
    }

    /// One piece of the body: joined to the held head while they fit in one write, otherwise
    /// handed to `write` (after the held head), framed as `framing` says.
    mutating func body(
        _ buffer: ByteBuffer, framing: HeaderRules.ClientFraming, allocator: ByteBufferAllocator,
        write: (ByteBuffer) -> Void
    ) {
        if var head = pending, head.readableBytes + buffer.readableBytes <= UpstreamHandler.coalesceLimit {
            pending = nil
            if framing == .chunked {
                ChunkedFraming.writeSizeLine(buffer.readableBytes, into: &head)
                head.writeImmutableBuffer(buffer)
                head.writeStaticString("\r\n")
            } else {
                head.writeImmutableBuffer(buffer)
            }
            pending = head
            return
        }
        if let head = takePending() { write(head) }
        if framing == .chunked {
            write(ChunkedFraming.sizeLine(buffer.readableBytes, allocator: allocator))
            write(buffer)
            write(ChunkedFraming.crlf)
        } else {
            write(buffer)
        }
    }

    /// The held head (and what joined it), to write now.
    mutating func takePending() -> ByteBuffer? {
        defer { pending = nil }
        return pending
    }
}
