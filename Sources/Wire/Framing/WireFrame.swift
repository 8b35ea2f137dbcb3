/// The framing of the analysis wire: every ZeroMQ message is one frame holding the 4-byte marker
/// `"LTW"` + version, then one protobuf-encoded `Envelope` (docs/wire.md).
public enum WireFrame {
    /// `"LTW"`: says the frame is LLMTap's.
    public static let magic: [UInt8] = Array("LTW".utf8)
    /// The wire version this build reads and writes: the one in the proto package name, `llmtap.wire.v1`.
    public static let version: UInt8 = 1
    /// Marker plus version.
    public static let header: [UInt8] = magic + [version]

    /// Encodes a whole envelope into one frame with SwiftProtobuf: the reference the fast
    /// `EnvelopeEncoder` is tested against, and handy for tools and tests.
    public static func encode(_ envelope: Envelope) throws -> [UInt8] {
        header + (try envelope.serializedBytes() as [UInt8])
    }

    /// Decodes one frame, or says exactly why it is not a valid record.
    public static func decode(_ frame: UnsafeRawBufferPointer) -> Result<Envelope, WireFrameError> {
        var decoder = EnvelopeDecoder()
        return decoder.decode(frame).map(\.envelope)
    }

    public static func decode(_ frame: [UInt8]) -> Result<Envelope, WireFrameError> {
        frame.withUnsafeBytes { decode($0) }
    }
}

/// Why a frame was refused. The raw values are stable: they are used as log keys and metric labels.
public enum FrameRejection: String, Sendable, CaseIterable, CustomStringConvertible {
    case emptyFrame = "empty_frame"
    case badMarker = "bad_marker"
    case unsupportedVersion = "unsupported_version"
    case undecodable = "undecodable"
    case incompleteEnvelope = "incomplete_envelope"
    case unexpectedMultipart = "unexpected_multipart"

    public var description: String { rawValue }
}

public struct WireFrameError: Error, CustomStringConvertible, Sendable {
    public let rejection: FrameRejection
    public let detail: String

    public init(_ rejection: FrameRejection, _ detail: String) {
        self.rejection = rejection
        self.detail = detail
    }

    public var description: String { "\(rejection): \(detail)" }
}
