// Short names for the generated wire types (analysis.pb.swift), which carry the proto package
// in their names. Both processes and the tests use these.
public typealias Envelope = Llmtap_Wire_V1_Envelope
public typealias WireRecord = Llmtap_Wire_V1_Envelope.OneOf_Record
public typealias WireRequest = Llmtap_Wire_V1_Request
public typealias WireStreamChunk = Llmtap_Wire_V1_StreamChunk
public typealias WireResponseDone = Llmtap_Wire_V1_ResponseDone
public typealias WireHeartbeat = Llmtap_Wire_V1_Heartbeat
public typealias WireProviderState = Llmtap_Wire_V1_ProviderState
public typealias WireHeader = Llmtap_Wire_V1_Header
public typealias WireWebSocketSession = Llmtap_Wire_V1_WebSocketSession
public typealias IngressMode = Llmtap_Wire_V1_IngressMode
public typealias Direction = Llmtap_Wire_V1_Direction
public typealias Outcome = Llmtap_Wire_V1_Outcome

extension WireRecord {
    /// A stable lower-case name for logs and metrics labels.
    public var kindName: String {
        switch self {
        case .request: "request"
        case .streamChunk: "stream_chunk"
        case .responseDone: "response_done"
        case .heartbeat: "heartbeat"
        }
    }
}
