/// A record already in its protobuf bytes, written where it happens (a sidecar's event loop) by
/// hand: straight from the exchange's own values, with no intermediate SwiftProtobuf message,
/// header array or `Data` copy of a body. The publisher's I/O thread then only frames and sends it.
///
/// The bytes are exactly what SwiftProtobuf writes for the same message (fields in number order,
/// proto3 defaults left out); `EncodedRecordTests` hold the two to that.
public struct EncodedRecord: Sendable {
    /// The record's field in `Envelope`'s `oneof record`.
    public enum Kind: Int, Sendable {
        case request = 10
        case streamChunk = 11
        case responseDone = 12
    }

    public let kind: Kind
    public let bytes: [UInt8]

    @usableFromInline
    init(kind: Kind, bytes: [UInt8]) {
        self.kind = kind
        self.bytes = bytes
    }

    var kindName: String {
        switch kind {
        case .request: "request"
        case .streamChunk: "stream_chunk"
        case .responseDone: "response_done"
        }
    }

    /// Writes a message in two passes over the same field list: one to size it, one to fill an
    /// array allocated once at that size.
    @inlinable
    static func make(_ kind: Kind, _ fields: (inout ProtobufFieldWriter) -> Void) -> EncodedRecord {
        var sizer = ProtobufFieldWriter(sizingOnly: ())
        fields(&sizer)
        let size = sizer.offset
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var writer = ProtobufFieldWriter(buffer.baseAddress.map(UnsafeMutableRawPointer.init))
            fields(&writer)
            precondition(writer.offset == size, "a record's fields wrote \(writer.offset) bytes after sizing \(size)")
            initialized = size
        }
        return EncodedRecord(kind: kind, bytes: bytes)
    }
}

/// Header fields as a record takes them: name and value bytes, in order. The sidecar's come
/// straight from the bytes it read; `StringHeaderFields` serves everything else.
public protocol RecordHeaderFields {
    func forEachField(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void)
}

/// Header fields held as strings.
public struct StringHeaderFields: RecordHeaderFields, Sendable {
    public var pairs: [(name: String, value: String)]

    public init(_ pairs: [(name: String, value: String)]) {
        self.pairs = pairs
    }

    public func forEachField(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        for (name, value) in pairs {
            var name = name
            var value = value
            name.withUTF8 { nameBytes in
                value.withUTF8 { body(UnsafeRawBufferPointer(nameBytes), UnsafeRawBufferPointer($0)) }
            }
        }
    }
}

/// What a `Request` record says, apart from its headers and body.
public struct RequestFields: Sendable {
    public var exchangeID = ""
    public var ingress = IngressMode.unspecified
    public var method = ""
    public var scheme = ""
    public var host = ""
    public var path = ""
    public var clientAddress = ""
    public var app = ""
    public var tenant = ""
    public var startUnixNanos: Int64 = 0
    public var bodySize: UInt64 = 0
    public var bodyTruncated = false
    public var httpVersion = ""
    public var keyID = ""
    public var projectID = ""

    public init() {}
}

/// What a `ResponseDone` record says, apart from its headers.
public struct ResponseDoneFields: Sendable {
    public var exchangeID = ""
    public var status: UInt32 = 0
    public var upstreamFirstByteUnixNanos: Int64 = 0
    public var endUnixNanos: Int64 = 0
    public var requestBytes: UInt64 = 0
    public var responseBytes: UInt64 = 0
    public var outcome = Outcome.unspecified
    public var error = ""
    public var responseChunks: UInt64 = 0
    public var responseTruncated = false
    public var rejectReason = ""
    public var attempts: UInt32 = 0
    public var provider = ""
    public var providerKeyID = ""
    /// Set for an exchange that switched to WebSocket.
    public var webSocket: WebSocketSessionFields?

    public init() {}
}

/// `WebSocketSession`'s fields, for `EncodedRecord.responseDone`.
public struct WebSocketSessionFields: Sendable, Equatable {
    public var closeCode: UInt32 = 0
    public var closedBy = Direction.unspecified
    public var closeReason = ""
    public var clientMessages: UInt64 = 0
    public var upstreamMessages: UInt64 = 0

    public init() {}
}

extension EncodedRecord {
    /// The value every secret header carries on the wire instead of its own.
    public static let redactedValue = "[redacted]"
    @usableFromInline static let redactedValueBytes = Array(redactedValue.utf8)

    /// A `Request`. Headers `isSecret` names go out with `redactedValue`.
    @inlinable
    public static func request<Headers: RecordHeaderFields>(
        _ request: RequestFields, headers: Headers, isSecret: (UnsafeRawBufferPointer) -> Bool,
        body: UnsafeRawBufferPointer
    ) -> EncodedRecord {
        make(.request) { out in
            out.string(1, request.exchangeID)
            out.varint(2, UInt64(request.ingress.rawValue))
            out.string(3, request.method)
            out.string(4, request.scheme)
            out.string(5, request.host)
            out.string(6, request.path)
            out.string(7, request.clientAddress)
            out.string(8, request.app)
            out.string(9, request.tenant)
            out.varint(10, UInt64(bitPattern: request.startUnixNanos))
            out.headers(11, headers, isSecret: isSecret)
            out.bytes(12, body)
            out.varint(13, request.bodySize)
            out.varint(14, request.bodyTruncated ? 1 : 0)
            out.string(15, request.httpVersion)
            out.string(16, request.keyID)
            out.string(17, request.projectID)
        }
    }

    /// A `StreamChunk` carrying `data`.
    public static func streamChunk(
        exchangeID: String, direction: Direction, index: UInt64, unixNanos: Int64, offset: UInt64,
        data: UnsafeRawBufferPointer, webSocketOpcode: UInt32 = 0, messageSize: UInt64 = 0
    ) -> EncodedRecord {
        make(.streamChunk) { out in
            out.string(1, exchangeID)
            out.varint(2, UInt64(direction.rawValue))
            out.varint(3, index)
            out.bytes(4, data)
            out.varint(5, UInt64(bitPattern: unixNanos))
            out.varint(6, offset)
            out.varint(7, UInt64(webSocketOpcode))
            out.varint(8, messageSize)
        }
    }

    /// A `ResponseDone`. Headers `isSecret` names go out with `redactedValue`.
    @inlinable
    public static func responseDone<Headers: RecordHeaderFields>(
        _ done: ResponseDoneFields, headers: Headers, isSecret: (UnsafeRawBufferPointer) -> Bool
    ) -> EncodedRecord {
        make(.responseDone) { out in
            out.string(1, done.exchangeID)
            out.varint(2, UInt64(done.status))
            out.headers(3, headers, isSecret: isSecret)
            out.varint(4, UInt64(bitPattern: done.upstreamFirstByteUnixNanos))
            out.varint(5, UInt64(bitPattern: done.endUnixNanos))
            out.varint(6, done.requestBytes)
            out.varint(7, done.responseBytes)
            out.varint(8, UInt64(done.outcome.rawValue))
            out.string(9, done.error)
            out.varint(10, done.responseChunks)
            out.varint(11, done.responseTruncated ? 1 : 0)
            out.string(12, done.rejectReason)
            out.varint(13, UInt64(done.attempts))
            out.string(14, done.provider)
            out.string(15, done.providerKeyID)
            if let session = done.webSocket { out.webSocketSession(16, session) }
        }
    }
}

/// Writes protobuf fields at a pointer, or, with no pointer, only counts the bytes they take.
/// Zero scalars and empty strings and bytes are left out, as proto3 does.
@usableFromInline
struct ProtobufFieldWriter {
    @usableFromInline let base: UnsafeMutableRawPointer?
    @usableFromInline var offset = 0

    @inlinable
    init(_ base: UnsafeMutableRawPointer?) {
        self.base = base
    }

    @inlinable
    init(sizingOnly: Void) {
        self.base = nil
    }

    @inlinable
    mutating func rawVarint(_ value: UInt64) {
        if let base {
            offset += ProtobufWireFormat.writeVarint(value, at: base + offset)
        } else {
            offset += ProtobufWireFormat.varintSize(value)
        }
    }

    @inlinable
    mutating func key(_ field: Int, _ wireType: ProtobufWireFormat.WireType) {
        rawVarint(ProtobufWireFormat.tag(field: field, wireType))
    }

    @inlinable
    mutating func varint(_ field: Int, _ value: UInt64) {
        guard value != 0 else { return }
        key(field, .varint)
        rawVarint(value)
    }

    @inlinable
    mutating func bytes(_ field: Int, _ value: UnsafeRawBufferPointer) {
        guard !value.isEmpty else { return }
        key(field, .lengthDelimited)
        rawVarint(UInt64(value.count))
        copy(value)
    }

    @inlinable
    mutating func string(_ field: Int, _ value: String) {
        guard base != nil else {
            // Sizing needs only the length, which a native string knows without a scan.
            let count = value.utf8.count
            if count > 0 {
                offset +=
                    ProtobufWireFormat.varintSize(ProtobufWireFormat.tag(field: field, .lengthDelimited))
                    + ProtobufWireFormat.varintSize(UInt64(count)) + count
            }
            return
        }
        var value = value
        value.withUTF8 { bytes(field, UnsafeRawBufferPointer($0)) }
    }

    /// Repeated `Header` messages: each is a length-delimited message of name (1) and value (2).
    @inlinable
    mutating func headers<Headers: RecordHeaderFields>(
        _ field: Int, _ headers: Headers, isSecret: (UnsafeRawBufferPointer) -> Bool
    ) {
        headers.forEachField { name, value in
            if isSecret(name) {
                EncodedRecord.redactedValueBytes.withUnsafeBytes { header(field, name: name, value: $0) }
            } else {
                header(field, name: name, value: value)
            }
        }
    }

    /// One `Header` message: name (1) and value (2). A value that is not UTF-8 (obs-text) can't
    /// be a protobuf string: it goes as its UTF-8 reading, invalid sequences as U+FFFD, in value
    /// and as its exact bytes in raw_value (3), so nothing is lost and the record still decodes.
    @inlinable
    mutating func header(_ field: Int, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard WireText.isValidUTF8(value) else {
            var readable = WireText.replacingInvalidUTF8(value)
            readable.withUTF8 { header(field, name: name, value: UnsafeRawBufferPointer($0), raw: value) }
            return
        }
        header(field, name: name, value: value, raw: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    @inlinable
    mutating func header(
        _ field: Int, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, raw: UnsafeRawBufferPointer
    ) {
        var size = 0
        if !name.isEmpty { size += 1 + ProtobufWireFormat.varintSize(UInt64(name.count)) + name.count }
        if !value.isEmpty { size += 1 + ProtobufWireFormat.varintSize(UInt64(value.count)) + value.count }
        if !raw.isEmpty { size += 1 + ProtobufWireFormat.varintSize(UInt64(raw.count)) + raw.count }
        key(field, .lengthDelimited)
        rawVarint(UInt64(size))
        bytes(1, name)
        bytes(2, value)
        bytes(3, raw)
    }

    /// A `WebSocketSession` message, written even when all its fields are zero (its presence says
    /// the exchange was a session).
    @usableFromInline
    mutating func webSocketSession(_ field: Int, _ session: WebSocketSessionFields) {
        var sizer = ProtobufFieldWriter(sizingOnly: ())
        sizer.webSocketSessionFields(session)
        key(field, .lengthDelimited)
        rawVarint(UInt64(sizer.offset))
        webSocketSessionFields(session)
    }

    @usableFromInline
    mutating func webSocketSessionFields(_ session: WebSocketSessionFields) {
        varint(1, UInt64(session.closeCode))
        varint(2, UInt64(session.closedBy.rawValue))
        string(3, session.closeReason)
        varint(4, session.clientMessages)
        varint(5, session.upstreamMessages)
    }

    @inlinable
    mutating func copy(_ source: UnsafeRawBufferPointer) {
        if let base, let from = source.baseAddress {
            (base + offset).copyMemory(from: from, byteCount: source.count)
        }
        offset += source.count
    }
}

extension EncodedRecord {
    /// The record as SwiftProtobuf reads it back: for tests and tools, not the data path.
    public func decoded() throws -> WireRecord {
        switch kind {
        case .request: .request(try WireRequest(serializedBytes: bytes))
        case .streamChunk: .streamChunk(try WireStreamChunk(serializedBytes: bytes))
        case .responseDone: .responseDone(try WireResponseDone(serializedBytes: bytes))
        }
    }
}
