import SwiftProtobuf

public typealias PolicyMessage = Llmtap_Wire_V1_PolicyMessage
public typealias PolicyKey = Llmtap_Wire_V1_PolicyKey
public typealias PolicyProject = Llmtap_Wire_V1_PolicyProject

/// The framing of the policy channel (docs/wire.md): a topic frame, then a frame holding the
/// 4-byte marker `"LTP"` + version and one protobuf `PolicyMessage`.
public enum PolicyFrame {
    public static let header: [UInt8] = Array("LTP".utf8) + [WireFrame.version]
    /// Changes and the beat, for every sidecar.
    public static let broadcastTopic: [UInt8] = Array("P".utf8)
    /// Snapshots for one sidecar: this prefix plus the nonce it subscribed with.
    public static let snapshotTopicPrefix = UInt8(ascii: "S")

    public static func snapshotTopic(nonce: String) -> [UInt8] {
        [snapshotTopicPrefix] + Array(nonce.utf8)
    }

    public static func encode(_ message: PolicyMessage) throws -> [UInt8] {
        header + (try message.serializedBytes() as [UInt8])
    }

    /// Decodes the message frame, or says why it is not one.
    public static func decode(_ frame: [UInt8]) -> Result<PolicyMessage, WireFrameError> {
        guard !frame.isEmpty else { return .failure(WireFrameError(.emptyFrame, "an empty policy frame")) }
        guard frame.count >= header.count, frame[0..<3].elementsEqual(header[0..<3]) else {
            return .failure(WireFrameError(.badMarker, "the frame does not start with LTP"))
        }
        guard frame[3] == WireFrame.version else {
            return .failure(
                WireFrameError(.unsupportedVersion, "policy version \(frame[3]); this build reads \(WireFrame.version)")
            )
        }
        do {
            return .success(try PolicyMessage(serializedBytes: frame[header.count...]))
        } catch {
            return .failure(WireFrameError(.undecodable, "\(error)"))
        }
    }
}

/// A sidecar's copy of the collector's policy state, kept current from the channel's messages.
/// Snapshots replace it; a change applies only on top of the version it was made from, so a
/// missed message, or a collector that restarted, shows as a gap and asks for a snapshot.
public struct PolicyReplica: Sendable {
    public private(set) var collectorID = ""
    public private(set) var version: UInt64 = 0
    /// By key id.
    public private(set) var keys: [String: PolicyKey] = [:]
    /// By project id.
    public private(set) var projects: [String: PolicyProject] = [:]
    /// False until the first snapshot: until then nothing is known, and nothing may pass.
    public private(set) var hasSnapshot = false

    public enum Outcome: Equatable, Sendable {
        /// The state changed.
        case applied
        /// Nothing new (a beat, or a message already seen).
        case unchanged
        /// The replica is behind or from another collector run: it needs a snapshot.
        case needsSnapshot
    }

    public init() {}

    public mutating func apply(_ message: PolicyMessage) -> Outcome {
        if message.full {
            collectorID = message.collectorID
            version = message.version
            keys = Dictionary(message.keys.map { ($0.keyID, $0) }, uniquingKeysWith: { $1 })
            projects = Dictionary(message.projects.map { ($0.projectID, $0) }, uniquingKeysWith: { $1 })
            hasSnapshot = true
            return .applied
        }
        guard hasSnapshot, message.collectorID == collectorID else { return .needsSnapshot }
        if message.version <= version { return .unchanged }
        guard message.baseVersion == version else { return .needsSnapshot }
        for key in message.keys { keys[key.keyID] = key }
        for project in message.projects { projects[project.projectID] = project }
        for removed in message.removedProjects {
            projects[removed] = nil
            keys = keys.filter { $0.value.projectID != removed }
        }
        version = message.version
        return .applied
    }
}
