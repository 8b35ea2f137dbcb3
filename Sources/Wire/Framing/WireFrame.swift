import Foundation
import SwiftProtobuf

/// The framing of the analysis wire: every ZeroMQ message is one frame holding the 4-byte marker
/// `"LTW"` + version, then one protobuf-encoded `Envelope` (docs/wire.md).
public enum WireFrame {
    /// `"LTW"`: says the frame is LLMTap's.
    public static let magic: [UInt8] = Array("LTW".utf8)
    /// The wire version this build reads and writes: the one in the proto package name, `llmtap.wire.v1`.
    public static let version: UInt8 = 1
    /// Marker plus version.
    public static let header: [UInt8] = magic + [version]

    /// Encodes an envelope into one frame.
    public static func encode(_ envelope: Envelope) throws -> [UInt8] {
        let body: [UInt8] = try envelope.serializedBytes()
        var frame = header
        frame.reserveCapacity(header.count + body.count)
        frame.append(contentsOf: body)
        return frame
    }

    /// Decodes one frame, or says exactly why it is not a valid record.
    public static func decode(_ frame: UnsafeRawBufferPointer) -> Result<Envelope, WireFrameError> {
        guard !frame.isEmpty else {
            return .failure(WireFrameError(.emptyFrame, "the frame has no bytes"))
        }
        guard frame.count >= header.count, frame.prefix(magic.count).elementsEqual(magic) else {
            return .failure(WireFrameError(.badMarker, "the frame does not start with \"LTW\" (first bytes: \(hexPrefix(frame)))"))
        }
        guard frame[magic.count] == version else {
            return .failure(WireFrameError(.unsupportedVersion, "wire version \(frame[magic.count]); this build reads version \(version)"))
        }
        let body = UnsafeRawBufferPointer(rebasing: frame[header.count...])
        let envelope: Envelope
        do {
            // No copy: the bytes fields are copied out by the decoder, so `body` may go away after this call.
            let data = body.isEmpty
                ? Data()
                : Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: body.baseAddress!), count: body.count, deallocator: .none)
            envelope = try Envelope(serializedBytes: data)
        } catch {
            return .failure(WireFrameError(.undecodable, "the protobuf envelope does not decode (\(error)), \(body.count) bytes"))
        }
        if let problem = envelope.validationProblem {
            return .failure(WireFrameError(.incompleteEnvelope, problem))
        }
        return .success(envelope)
    }

    public static func decode(_ frame: [UInt8]) -> Result<Envelope, WireFrameError> {
        frame.withUnsafeBytes { decode($0) }
    }

    private static func hexPrefix(_ bytes: UnsafeRawBufferPointer) -> String {
        bytes.prefix(8).map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
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

extension Envelope {
    /// What makes a well-formed protobuf still not a record we can account for, or nil.
    var validationProblem: String? {
        if sidecarID.isEmpty { return "the envelope has no sidecar_id" }
        if bootID.isEmpty { return "the envelope from \(sidecarID) has no boot_id" }
        if seq == 0 { return "the envelope from \(sidecarID) has seq 0; sequences start at 1" }
        if record == nil { return "the envelope \(sidecarID)#\(seq) carries no record, or one this build does not know" }
        return nil
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
